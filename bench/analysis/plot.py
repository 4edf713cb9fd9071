"""The scale curves as one PNG (matplotlib, Debian's python3-matplotlib: a benchmark requirement,
never the package's). Takes the rows of analysis.scale.level_row and the long run's summary."""

from __future__ import annotations

from pathlib import Path


def ms(v):
    return None if v is None else v * 1000


def pct(v):
    return None if v is None else v * 100


def _series(ax, rows, key, label, scale=lambda v: v, marker="o"):
    points = [(r["apps"], scale(r.get(key))) for r in rows if r.get(key) is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)


def draw(rows: list[dict], path: Path, title: str, longrun: dict | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["apps"])
    panels = 5 if longrun else 4
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), constrained_layout=True)
    ax = axes[0]
    _series(ax, rows, "lone_own_median", "lone switch (median)", ms)
    _series(ax, rows, "concurrent_own_median", "10 at once (median)", ms, "s")
    _series(ax, rows, "concurrent_own_max", "10 at once (max)", ms, "^")
    ax.set_title("agent's own overhead per switch")
    ax.set_ylabel("ms")
    ax = axes[1]
    _series(ax, rows, "status_all_agent", "status (all apps)", ms)
    _series(ax, rows, "status_app_agent", "status APP", ms, "s")
    ax.set_title("status round trip (no client start-up)")
    ax.set_ylabel("ms (median)")
    ax = axes[2]
    _series(ax, rows, "idle_cpu", "idle", pct)
    _series(ax, rows, "journal_agent_cpu", "all apps in probation, logging", pct, "s")
    ax.set_title("agent CPU")
    ax.set_ylabel("% of one CPU")
    ax = axes[3]
    _series(ax, rows, "rss_mb", "RSS")
    _series(ax, rows, "rss_anon_mb", "of it anonymous", marker="s")
    ax.set_title("agent memory after the level's rounds")
    ax.set_ylabel("MB")
    for ax in axes[:4]:
        ax.set_xlabel("apps on the host")
        ax.set_xticks([r["apps"] for r in rows])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if longrun:
        ax = axes[4]
        series = longrun["series"]
        done = [s["switches"] + s["rollbacks"] for s in series]
        ax.plot(done, [s["rss_kb"] / 1024 for s in series], marker="o", label="RSS (MB)")
        ax.plot(done, [s["fds"] for s in series], marker="s", label="open fds")
        ax.plot(done, [s["threads"] for s in series], marker="^", label="threads")
        if all(s["matches"] is not None for s in series):
            ax.plot(done, [s["matches"] for s in series], marker="x", label="D-Bus matches")
        ax.set_title("long run: one agent")
        ax.set_xlabel("switches + rollbacks")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
