"""Helpers of the `haic caption` tests: a ~40-entry dataset, running and killing the command,
reading an output folder back."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from haic_kernels.app.caption.testpoints import PAUSE_ENV, PAUSE_FILE_ENV

# What an answer is made of; timings differ from run to run and are left out.
ANSWER_FIELDS = ("path", "question", "answer", "error", "token_ids", "num_frames",
                 "frame_indices", "timestamps", "model", "template")  # fmt: skip
# Small and fast: 2-token answers, batches of 4, shards of 6 entries (7 units for 40 entries).
JOB = ("--device", "cpu", "--max-new-tokens", "2", "--batch-size", "4", "--shard-size", "6",
       "--no-progress")  # fmt: skip


def make_dataset(root: Path) -> tuple[Path, list[str]]:
    """A manifest of 40 entries: 32 readable (8 clips of 2-4 s, each asked 4 questions of other
    lengths), 4 unreadable files, 4 missing files, interleaved. Returns (manifest, ids)."""
    from haic_kernels.video.synthetic import write_clip

    root.mkdir(parents=True, exist_ok=True)
    opts = {"cpu-used": "8", "deadline": "realtime"}
    for k in range(8):
        write_clip(root / f"clip{k}.webm", 8 + 2 * k, fps=4, width=64, height=48, options=opts)
    (root / "junk.webm").write_bytes(b"\x1aE\xdf\xa3 not really a webm" * 4)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mkv").write_text("hello")
    good = (root / "clip0.webm").read_bytes()
    (root / "truncated.webm").write_bytes(good[: len(good) // 5])
    bad = ["junk.webm", "empty.mp4", "text.mkv", "truncated.webm"]
    lines, n_good = [], 0
    for i in range(40):
        if i % 10 == 3:
            lines.append({"id": f"bad{i:02d}", "path": bad[i // 10]})
        elif i % 10 == 7:
            lines.append({"id": f"gone{i:02d}", "path": f"missing/clip{i}.webm"})
        else:
            q = "What happens?" + " Describe it." * (n_good % 4)
            lines.append({"id": f"v{i:02d}", "path": f"clip{n_good % 8}.webm", "question": q})
            n_good += 1
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest, [x["id"] for x in lines]


def haic_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CLI decides for itself
    env.update(extra)
    return env


def caption(manifest: Path, out: Path, *args: str, timeout: float = 600):
    """`haic caption` run to the end in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "haic_kernels.app.cli", "caption", str(manifest), "--output",
         str(out), *JOB, *args],
        capture_output=True, text=True, timeout=timeout, env=haic_env(),
    )  # fmt: skip


def caption_killed_at(manifest: Path, out: Path, point: str, n: int, tmp: Path) -> str:
    """Run `haic caption` until it pauses at test point ``point`` for the n-th time, then
    SIGKILL it. Returns its stderr; fails if it ended before reaching the point."""
    marker = tmp / f"paused-{point}-{n}-{time.monotonic_ns()}"
    err = tmp / f"{marker.name}.stderr"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "haic_kernels.app.cli", "caption", str(manifest),
             "--output", str(out), *JOB],
            stdout=subprocess.DEVNULL, stderr=f,
            env=haic_env(**{PAUSE_ENV: f"{point}:{n}", PAUSE_FILE_ENV: str(marker)}),
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while not marker.exists():  # polling a file, not guessing how long a step takes
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"never paused at {point}:{n}:\n{err.read_text()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return err.read_text()


def read_jsonl(out: Path) -> list[dict]:
    """Every row of every committed JSONL shard."""
    rows = []
    for path in sorted((out / "jsonl").glob("part-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def by_id(rows: list[dict]) -> dict[str, dict]:
    """Rows keyed by id; fails on a repeated id."""
    out: dict[str, dict] = {}
    for r in rows:
        assert r["id"] not in out, f"id {r['id']!r} written twice"
        out[r["id"]] = r
    return out


def answers(rows: dict[str, dict]) -> dict[str, tuple]:
    return {i: tuple(json.dumps(r[k]) for k in ANSWER_FIELDS) for i, r in rows.items()}


def _ip(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} address (host-order 32-bit words in hex) -> the address."""
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    ip = ipaddress.ip_address(raw)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def listening_addresses(root: int | None = None) -> list:
    """The local address of every listening TCP socket held by a descendant of ``root``
    (default: this process), read from /proc (Linux)."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # TCP_LISTEN
                listening[f[9]] = _ip(f[1].split(":")[0])
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, todo = set(), [root or os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in family]
        family.update(kids)
        todo += kids
    found = []
    for pid in family:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        found += [
            listening[x[8:-1]] for x in links if x.startswith("socket:[") and x[8:-1] in listening
        ]
    return found
