"""Write the pre-cropped 64×64 version of the offline CelebA 6k subset.

The original ``celeba/celeba_align_subset6000_jpegbytes.npz`` (178×218 JPEGs, 40 MB) is cropped exactly as
``diffusion.data`` does (148×148 box at top 40, left 15, bicubic resize to 64×64), and each crop is
re-encoded as JPEG (quality 95, 4:4:4 chroma) so that the file is small enough to travel to a remote GPU
machine (64 MiB transfer limit). ``load_dataset("celeba-6k", root=...)`` reads it when the original is
absent and labels it "CelebA 6k subset (64×64, JPEG q95 re-encoded)".

Usage::

    python scripts/precrop_celeba.py --data-root /path/to/shared/data --out data/celeba/celeba6k_64.npz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.data import CELEBA6K_FILE, CELEBA6K_PRECROPPED_FILE, celeba_crop, resolve_data_root  # noqa: E402


def precrop(src: Path, dst: Path, quality: int = 95) -> dict:
    """Crop every image of ``src`` to 64×64, re-encode it as JPEG ``quality`` and write ``dst`` (an npz with
    the same keys as the original: jpeg_bytes, offsets, filenames, identity, partition, plus
    source_sha256 and quality). Returns a summary dict (count, bytes in, bytes out)."""
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1 … 100, got {quality}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"source file {src} not found (the offline subset is {CELEBA6K_FILE} under the "
                                f"shared data directory)")
    with np.load(src) as z:
        jpeg_bytes, offsets = z["jpeg_bytes"], z["offsets"]
        extra = {k: z[k] for k in ("filenames", "identity", "partition")}
    chunks, new_offsets = [], [0]
    for i in tqdm(range(len(offsets) - 1), desc="cropping CelebA 6k", unit="img"):
        img = Image.open(io.BytesIO(jpeg_bytes[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
        buf = io.BytesIO()
        celeba_crop(img).save(buf, format="JPEG", quality=quality, subsampling=0)
        chunks.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        new_offsets.append(new_offsets[-1] + len(chunks[-1]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, jpeg_bytes=np.concatenate(chunks), offsets=np.asarray(new_offsets, dtype=np.int64),
                            source_sha256=np.asarray(hashlib.sha256(src.read_bytes()).hexdigest()),
                            quality=np.asarray(quality), **extra)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    return {"images": len(chunks), "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None,
                        help="directory holding celeba/ (default: $DDPM_DATA_ROOT, else <repo>/data)")
    parser.add_argument("--out", default=None, help=f"output file (default: <data-root>/{CELEBA6K_PRECROPPED_FILE})")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the re-encoded crops")
    args = parser.parse_args(argv)
    root = resolve_data_root(args.data_root)
    out = Path(args.out) if args.out else root / CELEBA6K_PRECROPPED_FILE
    summary = precrop(root / CELEBA6K_FILE, out, args.quality)
    print(f"wrote {out}: {summary['images']} images, {summary['bytes_in'] / 2**20:.1f} MiB → "
          f"{summary['bytes_out'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
