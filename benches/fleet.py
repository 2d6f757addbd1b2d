#!/usr/bin/env python3
"""Builds a synthetic fleet of VMIs shaped like the paper's Table I.

    benches/fleet.py --pool DIR_OF_YOLO --out /var/tmp/fleet/gen [--n 1000]

For each VMI it writes a sparse file `images/FAMILY-NNNN.img` of the family's
average VMI size (apparent size; only the boot blocks are written) and its
boot image `yolo/FAMILY-NNNN.img.yolo` in the .yolo format of docs/format.md
(written directly: `capture` would hash the whole 1.4 GB file, see below).

Block contents come from the real boot images in --pool (the demo's family):
the distinct 4 KiB blocks of those images are the pool. Each VMI's boot
image, of S blocks (the family's Table I boot image size divided by
--scale), is made of

    COMMON  2% of S: pool blocks as they are, the same in every family
    BASE   70% of S: the family's base OS, the same in every VMI of it
    PKG    25% of S: 5 of the family's 24 packages, picked Zipf-like
    OWN     3% of S: blocks of this VMI alone

A family block is a pool block whose first 16 bytes are replaced by a hash
of (family, role, index): equal within the family, distinct across
families, with the rest of the block, and so its compressibility, real.
Ten probe VMIs (index 5000 and up, Table I's mix) are made too: the bench
imports them into a store of N VMIs to time the import of one more.
Everything is deterministic in (family, index), so the fleet of N VMIs is
the first VMIs of each family of the 1000-VMI fleet and a fleet generated
once serves every N (`--list N` prints the names of that subset).

The identity field of each boot image is NOT the BLAKE3 of the whole VMI
(hashing 1.4 TB of mostly holes would take about 100 minutes here: 6.4 s
per sparse 1.4 GB file on this machine); it is the BLAKE3 of the VMI's
recorded blocks and size. Serving and import do not read it; only
`verify --repair --images` does, and would refuse to rebuild from these
VMIs. The trailer checksum is a real BLAKE3 (`b3sum`).
"""
import argparse
import hashlib
import importlib.util
import os
import pathlib
import random
import struct
import subprocess
import sys

# The one reader of the .yolo format among the scripts.
_spec = importlib.util.spec_from_file_location(
    "yolo_blocks", pathlib.Path(__file__).parent.parent / "scripts" / "yolo-blocks.py"
)
yolo_blocks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(yolo_blocks)

BS = 4096
# Table I: family, VMIs, size of images (GB), size of all boot images (GB).
TABLE_I = [
    ("centos", 156, 223, 6.3),
    ("debian", 180, 216, 4.7),
    ("ubuntu", 236, 272, 16.0),
    ("coreos", 221, 173, 1.2),
    ("rhel", 167, 302, 7.0),
    ("windows", 15, 191, 5.2),
]
TOTAL = sum(f[1] for f in TABLE_I)  # 983
SHARE_COMMON, SHARE_BASE, SHARE_PKG = 0.02, 0.70, 0.25
PACKAGES, PICKS = 24, 5


def family_counts(n):
    """Table I's counts scaled to n VMIs (largest remainder, each family >= 1 if n >= 6)."""
    raw = [n * f[1] / TOTAL for f in TABLE_I]
    counts = [int(r) for r in raw]
    if n >= len(TABLE_I):
        counts = [max(1, c) for c in counts]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(counts) < n:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > n:
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


def names(n):
    out = []
    for (fam, *_), c in zip(TABLE_I, family_counts(n)):
        out += [f"{fam}-{i:04d}.img" for i in range(c)]
    return out


PROBE_FIRST = 5000


def probes():
    """(family index, VMI index) of 10 VMIs outside every fleet, in Table I's
    mix: the bench imports them into a store of N VMIs to time one more."""
    out = []
    for fidx, c in enumerate(family_counts(10)):
        out += [(fidx, PROBE_FIRST + i) for i in range(c)]
    return out


def read_pool(paths):
    """Distinct full 4 KiB blocks of the .yolo files, in file order."""
    seen, pool = set(), []
    for p in paths:
        for bs, _name, _size, _ids, blocks in yolo_blocks.files(p):
            if bs != BS:
                sys.exit(f"{p}: not a .yolo with 4 KiB blocks")
            for blk in blocks:
                if len(blk) == BS:
                    h = hashlib.blake2b(blk, digest_size=16).digest()
                    if h not in seen:
                        seen.add(h)
                        pool.append(blk)
    if not pool:
        sys.exit("empty pool")
    return pool


def synthetic_pool(count):
    """Blocks of words drawn from a small vocabulary: compressible like
    system files (zstd -3 gets about 3x), for where no real boot image is
    at hand (the test suite)."""
    rng = random.Random("pool")
    words = [bytes(rng.randrange(32, 127) for _ in range(rng.randrange(2, 12))) for _ in range(512)]
    pool = []
    for _ in range(count):
        out = bytearray()
        while len(out) < BS:
            out += rng.choice(words) + b" "
        pool.append(bytes(out[:BS]))
    return pool


def tagged(pool, idx, tag):
    """Pool block idx with its first 16 bytes replaced by a hash of tag and idx."""
    blk = pool[idx % len(pool)]
    head = hashlib.blake2b(f"{tag}/{idx}".encode(), digest_size=16).digest()
    return head + blk[16:]


def b3(data):
    out = subprocess.run(["b3sum", "--no-names", "--raw"], input=data, capture_output=True, check=True)
    return out.stdout[:32]


def vmi(pool, fidx, i, scale, vmi_scale):
    """(name, file size, [(block id, bytes)] in first-access order) of VMI i of family fidx."""
    fam, _count, img_gb, boot_gb = TABLE_I[fidx]
    s = max(16, int(boot_gb * 1e9 / TABLE_I[fidx][1] / scale / BS))
    size = int(img_gb * 1e9 / TABLE_I[fidx][1] / vmi_scale) // BS * BS
    nblocks = size // BS
    n_common = max(1, int(s * SHARE_COMMON))
    n_base = int(s * SHARE_BASE)
    pkg_len = max(1, int(s * SHARE_PKG / PICKS))
    n_own = max(1, s - n_common - n_base - PICKS * pkg_len)
    # Where blocks sit in the file: the family's layout, the same for all its VMIs.
    frng = random.Random(f"layout/{fam}")
    slots = frng.sample(range(nblocks), n_common + n_base + PACKAGES * pkg_len)
    base_slots = slots[: n_common + n_base]
    pkg_slots = slots[n_common + n_base :]
    rng = random.Random(f"vmi/{fam}/{i}")
    # Zipf-like popularity: package p picked with weight 1/(p+1).
    picks = set()
    while len(picks) < PICKS:
        picks.add(rng.choices(range(PACKAGES), weights=[1 / (p + 1) for p in range(PACKAGES)])[0])
    used = set(slots)
    own_slots = []
    while len(own_slots) < n_own:
        b = rng.randrange(nblocks)
        if b not in used:
            used.add(b)
            own_slots.append(b)
    blocks = []
    off = fidx * 7919  # each family starts elsewhere in the pool
    for k in range(n_common):
        blocks.append((base_slots[k], pool[k % len(pool)]))
    for k in range(n_base):
        blocks.append((base_slots[n_common + k], tagged(pool, off + k, f"{fam}/base")))
    for p in sorted(picks):
        for k in range(pkg_len):
            blocks.append((pkg_slots[p * pkg_len + k], tagged(pool, off + n_base + p * pkg_len + k, f"{fam}/pkg{p}")))
    for k in range(n_own):
        blocks.append((own_slots[k], tagged(pool, off + 3 * k + i, f"{fam}/{i}/own")))
    return f"{fam}-{i:04d}.img", size, blocks


def write_vmi(path, size, blocks):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for bid, data in sorted(blocks):
            os.pwrite(fd, data, bid * BS)
    finally:
        os.close(fd)


def yolo_bytes(name, size, blocks):
    nb = name.encode()
    ident = b3(struct.pack("<Q", size) + b"".join(struct.pack("<Q", b) + d for b, d in blocks))
    parts = [
        struct.pack("<8sHHIII", b"YOLOBOOT", 1, 0, BS, 1, 0),
        struct.pack("<H", len(nb)),
        nb,
        struct.pack("<QB", size, 1),
        ident,
        struct.pack("<Q", len(blocks)),
        struct.pack(f"<{len(blocks)}Q", *[b for b, _ in blocks]),
        b"".join(d for _, d in blocks),
    ]
    body = b"".join(parts)
    return body + b"YOLOEND\0" + b3(body)


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="VMIs (default 1000)")
    ap.add_argument("--out", help="output directory (images/ and yolo/ under it)")
    ap.add_argument("--pool", help="directory of real .yolo boot images (4 KiB blocks)")
    ap.add_argument("--synthetic-pool", type=int, metavar="BLOCKS", help="no real boot images: BLOCKS made-up blocks")
    ap.add_argument("--scale", type=float, default=8, help="boot image size = Table I's / SCALE (default 8)")
    ap.add_argument("--vmi-scale", type=float, default=1, help="VMI apparent size = Table I's / VMI_SCALE (default 1)")
    ap.add_argument("--list", type=int, metavar="N", help="print the names of the N-VMI fleet and exit")
    ap.add_argument("--list-probes", action="store_true", help="print the names of the 10 probe VMIs and exit")
    a = ap.parse_args()
    if a.list is not None:
        print("\n".join(names(a.list)))
        return
    if a.list_probes:
        print("\n".join(f"{TABLE_I[f][0]}-{i:04d}.img" for f, i in probes()))
        return
    if not a.out or not (a.pool or a.synthetic_pool):
        ap.error("--out and --pool (or --synthetic-pool) are needed")
    if a.pool:
        pool = read_pool(sorted(os.path.join(a.pool, f) for f in os.listdir(a.pool) if f.endswith(".yolo")))
    else:
        pool = synthetic_pool(a.synthetic_pool)
    os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "yolo"), exist_ok=True)
    total_boot = 0
    todo = [(f, i) for f, c in enumerate(family_counts(a.n)) for i in range(c)] + probes()
    for fidx, i in todo:
        name, size, blocks = vmi(pool, fidx, i, a.scale, a.vmi_scale)
        ypath = os.path.join(a.out, "yolo", name + ".yolo")
        ipath = os.path.join(a.out, "images", name)
        total_boot += sum(len(d) for _, d in blocks)
        if os.path.exists(ypath) and os.path.exists(ipath) and os.path.getsize(ipath) == size:
            continue  # made by an earlier run: everything is deterministic
        write_vmi(ipath, size, blocks)
        write_atomic(ypath, yolo_bytes(name, size, blocks))
    print(f"{a.n} VMIs and 10 probes, pool {len(pool)} blocks, boot images {total_boot} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
