"""Camera messages and rosbag2 bags for the adapter tests: a panning stream serialised as a camera
driver sends it, read back with rosbags; and a one-step round's settings."""

import cv2
import numpy as np

PERIOD_NS = 66_666_667  # 15 Hz
START_NS = 1_700_000_000 * 10**9
IMAGE = "sensor_msgs/msg/Image"
TOPIC = "/camera/image"


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def texture(seed, height=160, width=480):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def panning(count, seed=0, size=64, speed=2):
    """`count` frames panning across a texture by `speed` px a frame."""
    image = texture(seed)
    return np.stack([image[20:20 + size, speed * i:speed * i + size] for i in range(count)])


def serialize(frame, stamp_ns, store=None):
    """A sensor_msgs/Image as the wire (and a bag) carries it: CDR bytes."""
    store = store or typestore()
    types = store.types
    height, width = frame.shape[:2]
    msg = types[IMAGE](
        header=types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
            frame_id="camera"),
        height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
        data=np.ascontiguousarray(frame).reshape(-1))
    return bytes(store.serialize_cdr(msg, IMAGE))


def read_bag(path):
    """(topic, [(receive ns, header stamp ns, rgb frame)]) of a bag, with rosbags."""
    from rosbags.rosbag2 import Reader

    from bootstap_ros.images import message_to_rgb

    store = typestore()
    with Reader(path) as reader:
        [connection] = reader.connections
        out = []
        for _, receive, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            out.append((receive, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, message_to_rgb(msg)))
        return connection.topic, out


def clip_messages(count=6, seed=0, start=START_NS):
    frames = panning(count, seed=seed)
    return [(start + i * PERIOD_NS, serialize(frame, start + i * PERIOD_NS)) for i, frame in enumerate(frames)]


#: A round of one step with the small model: seconds, not minutes. The rounds below run their
#: children at the test's own priority (nice=0): at 19 a machine busy with other work starves
#: them for minutes (test_children_run_niced_with_their_threads_capped checks niceness).
FAST = ("steps=1", "clip_frames=4", "supervised_frames=4", "num_points=8", "supervised_points=8",
        "label_points=8", "validate_points=8", "holdout=0", "log_every=1")


def stream(frames, stamps):
    """(CDR bytes, receive ns) of each frame; received 1 ms after its stamp."""
    store = typestore()
    return [(serialize(frame, stamp, store), stamp + 1_000_000) for frame, stamp in zip(frames, stamps)]


def feed(recorder, messages):
    return [clip for clip in (recorder.add(data, IMAGE, receive) for data, receive in messages) if clip]
