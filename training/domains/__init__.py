"""Generated domains with exact tracks: Kubric-lite (`synthetic`, the source domain), its
textures, the robot domain, the low-light and wide-angle shifts, and real-warp clips."""
