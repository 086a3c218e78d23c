"""What SIGHUP in `basenode run` does beyond replacing the program list (reload.plan)."""

from __future__ import annotations

import dataclasses

from basenode import config, reload

BASE = config.Settings()  # the agent, HAProxy and so the sync loop run


def test_the_same_settings_only_hup_the_sync_loop():
    assert reload.plan(BASE, BASE) == reload.Plan(hup_sync=True)


def test_changed_settings_restart_the_sync_loop_after_forgetting_its_first_renders():
    new = dataclasses.replace(BASE, bind="0.0.0.0")
    assert reload.plan(BASE, new) == reload.Plan(forget_sync_ready=True, restart_sync=True)


def test_changed_agent_settings_restart_the_agent_too():
    new = dataclasses.replace(BASE, agent=config.Agent(datacenter="dc2"))
    assert reload.plan(BASE, new) == reload.Plan(
        restart_consul=True, forget_sync_ready=True, restart_sync=True
    )
    no_agent = dataclasses.replace(BASE, run_consul=False)
    assert not reload.plan(no_agent, dataclasses.replace(new, run_consul=False)).restart_consul


def test_a_sync_loop_the_reload_adds_waits_for_new_first_renders_and_is_not_restarted():
    before = dataclasses.replace(BASE, run_haproxy=False)
    assert reload.plan(before, BASE) == reload.Plan(forget_sync_ready=True)
    assert reload.plan(BASE, before) == reload.Plan()
