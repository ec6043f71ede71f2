"""Build script for bootstap_ros, an ament_python package.

`colcon build` and `pip install -e .` both run this file. Dependencies here are
unpinned; the exact versions used in CI live in requirements*.txt.
"""

import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = 'bootstap_ros'
TRAINING_PACKAGE = 'bootstap_ros_training'
HERE = Path(__file__).resolve().parent
#: bootstap_ros_training and its subpackages (adapter, bench, domains, ...), from training/.
TRAINING_PACKAGES = [TRAINING_PACKAGE] + [TRAINING_PACKAGE + '.' + name
                                          for name in find_packages(where=str(HERE / 'training'))]


def read_version():
    """Single source of truth: <version> in package.xml (the file ROS tools read);
    bootstap_ros/_version.py reads it the same way."""
    root = ET.parse(HERE / 'package.xml').getroot()
    version = (root.findtext('version') or '').strip()
    if not version:
        raise RuntimeError('package.xml has no <version>')
    return version


def share_files(pattern):
    """Files for share/bootstap_ros/<dir>; an empty or missing folder installs nothing."""
    return sorted(glob(pattern))


setup(
    name=PACKAGE_NAME,
    version=read_version(),
    description='Real-time causal BootsTAPIR point tracking for ROS 2',
    license='Apache-2.0',
    python_requires='>=3.10',
    # The repository's training/ folder is the package bootstap_ros_training, its only name
    # (a top-level `training` in site-packages would collide with other projects); each of
    # its subfolders is mapped too. `make setup` installs editable, so the name also works
    # in a checkout.
    packages=find_packages(include=[PACKAGE_NAME, PACKAGE_NAME + '.*']) + TRAINING_PACKAGES,
    package_dir={name: name.replace(TRAINING_PACKAGE, 'training', 1).replace('.', '/')
                 for name in TRAINING_PACKAGES},
    # The embedded default checkpoint (added later) ships inside the package.
    package_data={PACKAGE_NAME: ['data/*.pt']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE_NAME]),
        ('share/' + PACKAGE_NAME, ['package.xml']),
        ('share/' + PACKAGE_NAME + '/launch', share_files('launch/*.launch.py')),
        ('share/' + PACKAGE_NAME + '/config', share_files('config/*.yaml')),
    ],
    install_requires=[
        'numpy',
        'opencv-python-headless',
        'pyyaml',  # camera calibration files (video_source camera_info_file)
        'pillow',  # eval resizes videos with Pillow's Lanczos, as the official TAP-Vid code does
        'tqdm',
        'torch',
    ],
    extras_require={
        'test': ['pytest'],
        'onnx': ['onnx', 'onnxruntime', 'onnxscript'],
        # OpenVINO compiles the ONNX export, which onnxruntime checks against torch.
        'openvino': ['openvino', 'onnx', 'onnxruntime', 'onnxscript'],
        'train': ['tensorboard', 'rosbags'],  # rosbags: reads robot logs without ROS
        'eval': ['matplotlib'],
    },
    zip_safe=False,
    entry_points={
        'console_scripts': [
            'bootstap-track = bootstap_ros.cli.track:main',
            'bootstap-eval = bootstap_ros.eval.cli:main',
            'bootstap-bench = bootstap_ros.bench.step:main',
            'bootstap-queries = bootstap_ros.cli.queries:main',
            'bootstap-prepare-logs = bootstap_ros_training.logs:main',
            'bootstap-train-bootstrap = bootstap_ros_training.bootstrap:main',
            'bootstap-validate = bootstap_ros_training.validate:main',
            # The ROS nodes (run with `ros2 run bootstap_ros <name>`), through a starter that
            # handles SIGINT and SIGTERM before the node's slow imports (ros/entry.py):
            'tracker_node = bootstap_ros.ros.entry:tracker_node',
            'video_source = bootstap_ros.ros.entry:video_source',
            'bootstap_adapter = bootstap_ros.ros.entry:bootstap_adapter',
        ],
    },
)
