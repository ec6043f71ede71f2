"""An image sampler written independently of the clip generators, for checking their ground truth."""

import numpy as np

def bilinear(image, points):
    """Samples image [H, W, C] at raster points [..., 2] (pixel centres at +0.5),
    replicating the border. Written independently of the generator."""
    height, width = image.shape[:2]
    x, y = points[..., 0] - 0.5, points[..., 1] - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def at(yy, xx):
        return image[np.clip(yy, 0, height - 1).astype(int), np.clip(xx, 0, width - 1).astype(int)]

    image_top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    image_bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return image_top * (1 - fy) + image_bottom * fy
