#!/usr/bin/env python3
"""Development helper: snapshot a running process's writable private memory as raw images.

usage: dump_proc.py PID OUTDIR EPOCHS INTERVAL_S [MAX_MIB] [--shared]

With --shared, shared writable mappings (rw-s, e.g. a database's buffer pool) are included.
The region list (rw-p mappings from /proc/PID/maps) is fixed at the first snapshot so that
every image has the same size and layout; unreadable ranges read as zeros. The process is
stopped (SIGSTOP) while each snapshot is read, like a checkpoint pause. Needs ptrace rights
(root). Images are page-aligned concatenations of the regions: epoch_000.img, epoch_001.img...
"""
import os, signal, sys, time

def regions(pid, max_bytes, shared):
    out, total = [], 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if parts[1] not in (("rw-p", "rw-s") if shared else ("rw-p",)) or (len(parts) > 5 and parts[5].startswith("[v")):
                continue
            n = min(hi - lo, max_bytes - total)
            if n <= 0:
                break
            out.append((lo, n))
            total += n
    return out

def main():
    shared = "--shared" in sys.argv
    argv = [a for a in sys.argv if a != "--shared"]
    pid, outdir, epochs, interval = int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    max_bytes = int(argv[5]) * 2**20 if len(argv) > 5 else 256 * 2**20
    os.makedirs(outdir, exist_ok=True)
    regs = regions(pid, max_bytes, shared)
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    for e in range(epochs):
        os.kill(pid, signal.SIGSTOP)
        try:
            chunks = []
            for lo, n in regs:
                try:
                    b = os.pread(fd, n, lo)
                except OSError:
                    b = b""
                chunks.append(b + bytes(n - len(b)))
        finally:
            os.kill(pid, signal.SIGCONT)
        with open(os.path.join(outdir, f"epoch_{e:03d}.img"), "wb") as f:
            f.write(b"".join(chunks))
        time.sleep(interval)
    print(f"{epochs} images of {sum(n for _, n in regs)} bytes in {outdir}")

if __name__ == "__main__":
    main()
