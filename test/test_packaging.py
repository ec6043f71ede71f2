"""Packaging checks: a light top-level import, package.xml metadata, and a real colcon build."""

import importlib.metadata
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import bootstap_ros

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'bootstap_ros'
# Every command a user runs with `ros2 run bootstap_ros <name>` (setup.py's console scripts).
SCRIPTS = ('bootstap-track', 'bootstap-eval', 'bootstap-bench', 'bootstap-queries',
           'bootstap-prepare-logs', 'bootstap-train-bootstrap', 'bootstap-validate')

HEAVY_MODULES = ('torch', 'rclpy', 'onnxruntime', 'cv2')
EXEC_DEPENDS = {
    'rclpy', 'sensor_msgs', 'sensor_msgs_py', 'std_msgs', 'std_srvs', 'geometry_msgs',
    'diagnostic_msgs', 'launch', 'launch_ros', 'ros2launch', 'python3-numpy', 'python3-opencv',
}
TEST_DEPENDS = {'python3-pytest'}


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def tail(result, lines=40):
    text = (result.stdout + '\n' + result.stderr).strip().splitlines()
    return '\n'.join(text[-lines:])


def test_top_level_import_is_light():
    code = (
        'import sys, bootstap_ros\n'
        f'print(",".join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n'
    )
    result = run([sys.executable, '-c', code], cwd=REPO)
    assert result.returncode == 0, f'`import bootstap_ros` failed:\n{tail(result)}'
    loaded = [m for m in result.stdout.strip().split(',') if m]
    assert loaded == [], (
        f'`import bootstap_ros` imported {loaded}; import heavy modules where they are used'
    )


@pytest.fixture(scope='module')
def manifest():
    return ET.parse(REPO / 'package.xml').getroot()


def test_package_xml_is_format_3_ament_python(manifest):
    assert manifest.tag == 'package'
    assert manifest.get('format') == '3'
    assert manifest.findtext('name') == PACKAGE
    assert manifest.findtext('license') == 'Apache-2.0'
    assert manifest.findtext('export/build_type') == 'ament_python'


def test_package_xml_declares_dependencies(manifest):
    exec_depends = {e.text for e in manifest.findall('exec_depend')}
    exec_depends |= {e.text for e in manifest.findall('depend')}
    test_depends = {e.text for e in manifest.findall('test_depend')}
    assert EXEC_DEPENDS - exec_depends == set(), 'missing exec_depend entries in package.xml'
    assert TEST_DEPENDS - test_depends == set(), 'missing test_depend entries in package.xml'


def test_versions_agree(manifest):
    result = run([sys.executable, 'setup.py', '--version'], cwd=REPO)
    assert result.returncode == 0, f'setup.py --version failed:\n{tail(result)}'
    setup_version = result.stdout.strip().splitlines()[-1]
    assert manifest.findtext('version') == setup_version == bootstap_ros.__version__
    # The installed metadata (written by setup.py from package.xml at `make setup`).
    assert importlib.metadata.version(PACKAGE) == manifest.findtext('version')


def test_changelog_is_in_the_ros_format_and_names_the_version(manifest):
    """CHANGELOG.rst as catkin_generate_changelog writes it, newest version first: the
    version of package.xml, with a date, and at least one item."""
    lines = (REPO / 'CHANGELOG.rst').read_text().splitlines()
    title = f'Changelog for package {PACKAGE}'
    assert lines[:3] == ['^' * len(title), title, '^' * len(title)]
    sections = [(i, line) for i, line in enumerate(lines)
                if re.fullmatch(r'\d+\.\d+\.\d+ \(\d{4}-\d{2}-\d{2}\)', line)]
    assert sections, 'no "X.Y.Z (YYYY-MM-DD)" section'
    first, heading = sections[0]
    assert heading.split()[0] == manifest.findtext('version'), 'the newest section is not package.xml\'s version'
    assert lines[first + 1] == '-' * len(heading)
    assert lines[first + 2].startswith('* ')


def colcon_executable():
    # colcon comes from requirements-ros.txt, installed beside this interpreter by `make setup`.
    colcon = Path(sys.executable).parent / 'colcon'
    if not colcon.exists():
        pytest.fail(
            f'colcon not found at {colcon}: run `make setup`, which installs '
            'colcon-common-extensions from requirements-ros.txt into .venv'
        )
    return colcon


@pytest.mark.parametrize('symlink_install', [False, True], ids=['copy', 'symlink-install'])
def test_colcon_build_installs_package(tmp_path, symlink_install, manifest):
    colcon = colcon_executable()
    install = tmp_path / 'install'
    cmd = [
        str(colcon), '--log-base', str(tmp_path / 'log'),
        'build', '--base-paths', str(REPO), '--packages-select', PACKAGE,
        '--build-base', str(tmp_path / 'build'), '--install-base', str(install),
        '--event-handlers', 'console_cohesion+',
    ]
    if symlink_install:
        cmd.append('--symlink-install')
    env = dict(os.environ, COLCON_HOME=str(tmp_path / 'colcon_home'))
    result = run(cmd, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, f'colcon build failed:\n{tail(result)}'

    prefix = install / PACKAGE
    for script in SCRIPTS:
        path = prefix / 'lib' / PACKAGE / script
        assert path.is_file() and os.access(path, os.X_OK), f'{script} not installed at {path}'
    assert (prefix / 'share' / PACKAGE / 'package.xml').is_file()
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE).is_file()

    # As a user would: source the workspace, then find the package through ament and Python.
    code = (
        'import bootstap_ros\n'
        'from ament_index_python.packages import get_package_share_directory\n'
        f'print(bootstap_ros.__version__)\n'
        f'print(bootstap_ros.__file__)\nprint(get_package_share_directory({PACKAGE!r}))\n'
    )
    result = run(
        ['bash', '-c', 'source "$1/setup.bash" && exec "$2" -c "$3"', 'bash',
         str(install), sys.executable, code],
        cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, f'using the colcon install failed:\n{tail(result)}'
    version, module_file, share_dir = result.stdout.strip().splitlines()[-3:]
    assert version == manifest.findtext('version'), 'the installed package reports another version'
    assert Path(module_file).is_relative_to(tmp_path), (
        f'bootstap_ros imported from {module_file}, not from the colcon workspace {tmp_path}'
    )
    assert Path(share_dir) == prefix / 'share' / PACKAGE

    # Each command starts from the sourced workspace (the training commands import the
    # training code under its installed name, bootstap_ros_training).
    for script in SCRIPTS:
        result = run(['bash', '-c', 'source "$1/setup.bash" && exec "$2" --help', 'bash', str(install),
                      str(prefix / 'lib' / PACKAGE / script)], cwd=tmp_path, env=env, timeout=120)
        assert result.returncode == 0 and 'usage:' in result.stdout, f'{script} --help failed:\n{tail(result)}'


def test_an_install_holds_every_training_subpackage_under_the_one_name(tmp_path):
    # A plain (non-editable) install of the checkout: the training package and each of its
    # subfolders land under bootstap_ros_training, and no top-level `training` does.
    target = tmp_path / 'target'
    result = run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                  '--target', str(target), str(REPO)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, f'pip install failed:\n{tail(result)}'
    folders = sorted(path.parent.relative_to(REPO / 'training')
                     for path in (REPO / 'training').rglob('__init__.py'))
    assert len(folders) > 1, folders
    for folder in folders:
        for module in (REPO / 'training' / folder).glob('*.py'):
            installed = target / 'bootstap_ros_training' / folder / module.name
            assert installed.is_file(), f'{installed} missing from the install'
    assert not (target / 'training').exists()
