"""What the latency benchmarks share: realistic test messages, building a large mailbox
straight through the storage API (fast, no protocol), store chains for the targets, the
IMAP client, medians and plots."""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_mixed import ImapClient  # noqa: E402,F401 - re-exported

from cloudcote.core.mail.storage import MailStore, SaveRequest, StorageSettings  # noqa: E402
from cloudcote.libfs import open_fs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER = "bench"
WORDS = ("mail server storage latency object bucket request prefetch index cache message "
         "folder client reply thread subject header body quota delivery cloud").split()


def message_sizes(n: int, seed: int = 1, low: int = 2_000, high: int = 200_000) -> list[int]:
    """Log-normal sizes (median about 12 KB, as in measured mailboxes), clipped to
    ``low``..``high`` bytes."""
    rng = random.Random(seed)
    return [int(min(high, max(low, rng.lognormvariate(math.log(12_000), 1.1))))
            for _ in range(n)]


def make_message(i: int, size: int, rng: random.Random) -> bytes:
    head = (f"From: Sender {i % 37} <s{i % 37}@example.org>\r\n"
            f"To: {USER}@example.com\r\n"
            f"Subject: message {i} about {rng.choice(WORDS)} {rng.choice(WORDS)}\r\n"
            f"Date: Mon, 2 Nov 2026 10:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench-{i}@example.org>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    lines = []
    total = len(head)
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(11)) + "\r\n"
        lines.append(line)
        total += len(line)
    return head + "".join(lines).encode()


def make_messages(n: int, seed: int = 1, sizes: Sequence[int] | None = None) -> list[bytes]:
    rng = random.Random(seed)
    sizes = list(sizes) if sizes is not None else message_sizes(n, seed)
    return [make_message(i, s, rng) for i, s in enumerate(sizes)]


async def build_mailbox(spec: str, messages: Sequence[bytes], batch: int = 200) -> None:
    """Saves ``messages`` into ``USER``'s INBOX on the chain ``spec``."""
    fs = await open_fs(spec)
    try:
        store = MailStore(fs, StorageSettings())
        um = await store.user(USER)
        box = await um.mailbox("INBOX")
        for start in range(0, len(messages), batch):
            await box.save_many([SaveRequest(m) for m in messages[start:start + batch]])
    finally:
        await fs.close()


def services() -> dict[str, str]:
    env = {}
    for line in (ROOT / "scripts" / "services.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def s3_spec(prefix: str) -> str:
    env = services()
    return (f"s3:bucket=cloudcote-bench,prefix={prefix},create_bucket=yes,"
            f"endpoint={env['CLOUDCOTE_SEAWEEDFS_ENDPOINT']},"
            f"access_key={env['CLOUDCOTE_SEAWEEDFS_ACCESS_KEY']},"
            f"secret_key={env['CLOUDCOTE_SEAWEEDFS_SECRET_KEY']}")


def with_latency(spec: str, ms: float) -> str:
    return f"latency:{ms:g}ms:{spec}" if ms else spec


async def imap_login(port: int, password: str, host: str = "127.0.0.1") -> ImapClient:
    client = await ImapClient.connect(host, port)
    await client.command(f'LOGIN {USER} "{password}"')
    return client


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) process ``pid`` has used so far: on a busy machine a far
    steadier figure than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or None (said once) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install cloudcote[bench]): no plot")
        return None
    return plt


def bar_plot(path: str, title: str, groups: Sequence[str], series: dict[str, list[float]],
             ylabel: str, log: bool = False) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series; a PNG."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
