"""The documentation follows the code: the generated node reference is current."""

from pathlib import Path

from bootstap_ros.ros import reference

REPO = Path(__file__).resolve().parents[1]


def test_node_reference_page_is_what_the_command_writes():
    page = REPO / "docs" / "node-reference.md"
    assert page.is_file(), f"{page} is missing: run `{reference.COMMAND}`"
    assert page.read_text() == reference.render(), (
        f"{page.relative_to(REPO)} differs from bootstap_ros/ros/settings.py, interfaces.py or "
        f"launch/tracker.launch.py: run `{reference.COMMAND}` and commit the page")


def test_reference_check_mode_reports_a_stale_page(tmp_path, capsys):
    page = tmp_path / "node-reference.md"
    assert reference.main(["--output", str(page)]) == 0
    assert reference.main(["--output", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("| `max_points` | integer | `256` |",
                                             "| `max_points` | integer | `128` |"))
    assert reference.main(["--output", str(page), "--check"]) == 1
    assert reference.COMMAND in capsys.readouterr().err
