"""The demo, end to end, small."""

from __future__ import annotations

from bridge.demo import run_demo


async def test_demo_reaches_every_agent() -> None:
    """With 8 agents, 4 on the bus: 8 discovered, 4 on the bus, 8 of 8 reached, roles claimed."""
    lines: list[str] = []
    result = await run_demo(8, 4, say=lines.append)
    assert result.discovered == 8 and result.on_bus == 4
    report = result.report
    assert report is not None
    assert (report.total_agents, report.success_count) == (8, 8)
    assert (report.via_bus, report.via_http, report.failed) == (4, 4, [])
    assert set(result.claims) >= {"tpm", "senior-software-architect", "backend-developer"}
    assert any("reached 8 of 8 agents" in line for line in lines)
    assert any("discovered 8 of 8 agents via the Swarm API" in line for line in lines)
