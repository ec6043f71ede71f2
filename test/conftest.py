"""Test-session setup shared by every test module.

Owns the ROS environment of the test run: it is set here, at conftest import,
before any test module imports rclpy, so that ROS traffic stays on this machine
and on a domain of its own (two test runs side by side do not see each other).
Also registers the `gpu` and `slow` markers, and holds the fixtures several
modules share: `checkpoint` (the small model saved), `perturbed_embedded` (a second
trained model) and `ros` (a ROS executor).
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
# Valid domain ids for Fast DDS on Linux are 0..101; 0 is everybody's default.
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 101))
if 'ROS_LOG_DIR' not in os.environ:
    _ros_log_dir = tempfile.mkdtemp(prefix='bootstap_ros-test-roslog-')
    os.environ['ROS_LOG_DIR'] = _ros_log_dir
    atexit.register(shutil.rmtree, _ros_log_dir, ignore_errors=True)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """The small test model (small_model.py) saved as a project checkpoint: its path, a str."""
    from bootstap_ros.model import save_checkpoint
    from helpers.small_model import small_model

    path = tmp_path_factory.mktemp('ckpt') / 'small.pt'
    save_checkpoint(path, small_model())
    return str(path)


@pytest.fixture(scope='module')
def perturbed_embedded(tmp_path_factory):
    """Another trained model: the embedded model's weights, each scaled by 1 + 1% noise, saved
    as a project checkpoint (its path). It tracks about as well, with other query features."""
    import torch

    from bootstap_ros.model import load_checkpoint, save_checkpoint
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT

    model = load_checkpoint(EMBEDDED_CHECKPOINT).model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1 + 0.01 * torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp('perturbed') / 'perturbed.pt'
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope='module')
def ros():
    """A ROS context and executor (ros_client.Ros) shared by a module's nodes (imports rclpy)."""
    from helpers.ros_client import Ros

    ros = Ros()
    yield ros
    ros.close()
    if ros.errors:  # survived, but worth seeing
        print(f'executor errors while nodes came and went: {ros.errors!r}')


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device; skipped where none is available')
    config.addinivalue_line('markers', 'slow: takes more than a few seconds')


def pytest_report_header(config):
    return f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} (localhost only)"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if 'gpu' in item.keywords]
    if not gpu_items:
        return
    import torch  # only when a gpu test was collected: keeps plain runs light

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device (torch.cuda.is_available() is False)')
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def no_grad():
    """Inference only, scoped to one test so grad mode never leaks into other modules
    (use it module-wide with `pytestmark = pytest.mark.usefixtures('no_grad')`)."""
    import torch

    with torch.no_grad():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Fail a test that leaves torch's global grad mode off: it breaks every later training test."""
    result = yield
    torch = sys.modules.get('torch')
    if torch is not None and not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail('the test left torch.set_grad_enabled(False) on; use a torch.no_grad() context')
    return result
