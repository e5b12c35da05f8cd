"""Matplotlib figures for experiment tables (headless: the Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _num(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return float("nan")


def bars(rows: list[dict], label: str, metrics: list[str], path: str, title: str = "") -> None:
  """One panel per metric, one bar per row."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
  names = [str(r[label]) for r in rows]
  for ax, metric in zip(axes, metrics):
    ax.bar(names, [_num(r.get(metric)) for r in rows], color="tab:blue")
    ax.set_title(metric)
    ax.tick_params(axis="x", rotation=45)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def frontier(rows: list[dict], path: str, *, x: str = "kl", y: str = "ground_truth",
             group: str = "method", label: str = "", title: str = "") -> None:
  """Reward against KL, one marker and line per method, points sorted by KL."""
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  markers = "osD^v<>ph*"
  for i, name in enumerate(sorted({r[group] for r in rows})):
    pts = sorted(((_num(r[x]), _num(r[y]), r.get(label, "")) for r in rows if r[group] == name))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
            label=name, linestyle="-" if len(pts) > 1 else "none")
    if label:
      for px, py, text in pts:
        ax.annotate(str(text), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
  ax.set_xlabel("KL(policy || SFT), nats per response")
  ax.set_ylabel("ground-truth reward (mean over samples)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def arms(panels: list[tuple[str, list]], path: str, title: str = "") -> None:
  """One panel per quantity: each arm's mean over seeds (bar), its seeds (dots) and
  their standard deviation (error bar). `panels`: (quantity, [verdicts.Arm])."""
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
  for ax, (quantity, group) in zip(axes[0], panels):
    for i, arm in enumerate(group):
      ax.bar(i, arm.mean, color="tab:blue", alpha=0.6,
             yerr=arm.sd if len(arm.values) > 1 else None, capsize=4)
      ax.scatter([i] * len(arm.values), arm.values, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(group)), [arm.label for arm in group], rotation=30, ha="right",
                  fontsize=8)
    ax.set_title(quantity, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def curves_with_spread(curves: dict[str, list[tuple[float, object]]], path: str, *,
                       xlabel: str, ylabel: str, logx: bool = False, title: str = "") -> None:
  """One line per curve through each x's mean over seeds, a band of ± one standard
  deviation and the seeds as dots. `curves`: name -> [(x, verdicts.Arm)]."""
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for i, (name, points) in enumerate(curves.items()):
    color = f"C{i}"
    xs = [x for x, _ in points]
    means = [arm.mean for _, arm in points]
    sds = [arm.sd if len(arm.values) > 1 else 0.0 for _, arm in points]
    ax.plot(xs, means, marker="o", color=color, label=name)
    ax.fill_between(xs, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)],
                    color=color, alpha=0.15)
    for x, arm in points:
      ax.scatter([x] * len(arm.values), arm.values, color=color, s=8, alpha=0.6)
  if logx:
    ax.set_xscale("log")
    ticks = sorted({x for points in curves.values() for x, _ in points})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
  elif len({x for points in curves.values() for x, _ in points}) <= 12:
    ax.set_xticks(sorted({x for points in curves.values() for x, _ in points}))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)
