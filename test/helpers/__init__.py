"""Code that several test modules share: the small model, clips, ROS clients, fixture files.

Imported as `helpers.<module>` (pytest puts test/ on sys.path); no test module imports another.
"""
