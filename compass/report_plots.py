"""The report's charts: matplotlib figures saved as SVG text, inlined in the HTML (no network, no script).

Figures are built with matplotlib's object API (no pyplot: no global state, no GUI backend). Every artist that
shows data gets an id starting with ``mark-`` so a test (or a person in the inspector) can tell data marks
from axes and text. Text stays text in the SVG (svg.fonttype none): the browser draws it with its own fonts.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterable

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D",
           "#BAB0AC"]
STAGE_COLORS = {"kept": "#54A24B", "langid": "#E45756", "quality": "#F58518", "dedup": "#B279A2",
                "leakage": "#4C78A8", "other": "#BAB0AC"}
GUARD_COLORS = {"near_dup": "#B279A2", "class": "#E45756", "margin": "#F58518", "rank": "#BAB0AC"}
ROLE_COLORS = {"trained": "#4C78A8", "base": "#BAB0AC", "baseline": ["#F58518", "#72B7B2", "#EECA3B", "#9D755D"]}
_RC = {"svg.fonttype": "none", "svg.hashsalt": "compass-report", "font.size": 10, "axes.spines.top": False,
       "axes.spines.right": False, "axes.titlesize": 11, "axes.titleweight": "bold", "legend.frameon": False}


class Charts:
    """Builds SVG strings; one instance per report so data-mark ids are unique across the whole page."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def _mark(self, artists: Iterable) -> None:
        for a in artists:
            a.set_gid(f"mark-{next(self._ids)}")

    def _figure(self, w: float, h: float):
        from matplotlib.figure import Figure

        return Figure(figsize=(w, h), layout="constrained")

    def _svg(self, fig, n: int) -> str:
        import matplotlib

        buf = io.StringIO()
        with matplotlib.rc_context(_RC):
            fig.savefig(buf, format="svg")
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inside HTML
        # ids of matplotlib's own groups (figure_1, axes_1...) repeat in every figure; prefix them per chart
        return re.sub(r'id="(?!mark-)([^"]+)"', lambda m: f'id="c{n}-{m.group(1)}"',
                      svg).replace('xlink:href="#', f'xlink:href="#c{n}-').replace("url(#", f"url(#c{n}-")

    def render(self, build) -> str:
        """Build a figure inside matplotlib's rc context (so fonts and spines apply) and return its SVG."""
        import matplotlib

        with matplotlib.rc_context(_RC):
            fig = build()
            return self._svg(fig, next(self._ids))

    # -- charts ----------------------------------------------------------------------------------------------
    def funnel(self, rows: list[dict], stages: list[str]) -> str:
        """One panel per task: a bar per language, split into kept and the examples lost at each stage."""
        tasks = sorted({r["task"] for r in rows})

        def build():
            ncols = min(3, len(tasks))
            nrows = -(-len(tasks) // ncols)
            langs = sorted({r["lang"] for r in rows})
            fig = self._figure(3.4 * ncols + 0.6, 0.28 * len(langs) * nrows + 1.0 * nrows + 0.5)
            axes = fig.subplots(nrows, ncols, squeeze=False)
            for ax in axes.flat[len(tasks):]:
                ax.set_visible(False)
            for ax, task in zip(axes.flat, tasks):
                by_lang = {r["lang"]: r for r in rows if r["task"] == task}
                ys = list(range(len(langs)))[::-1]
                left = [0.0] * len(langs)
                for seg in ["kept", *stages, "other"]:
                    widths = []
                    for lang in langs:
                        r = by_lang.get(lang)
                        widths.append(_segment(r, seg, stages) if r else 0)
                    if not any(widths):
                        continue
                    bars = ax.barh(ys, widths, left=left, color=STAGE_COLORS.get(seg, "#999"), height=0.7,
                                   label="kept" if seg == "kept" else f"lost at {seg}")
                    self._mark(bars)
                    left = [a + b for a, b in zip(left, widths)]
                ax.set_yticks(ys, langs)
                ax.set_title(task, loc="left")
                ax.set_xlabel("examples")
            handles = {}
            for ax in axes.flat:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    handles.setdefault(lab, h)
            fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles))
            return fig

        return self.render(build)

    def reasons(self, reasons: list[dict], top: int = 15) -> str:
        rows = sorted(reasons, key=lambda r: -r["count"])[:top][::-1]

        def build():
            fig = self._figure(9, 0.3 * len(rows) + 1.0)
            ax = fig.subplots()
            bars = ax.barh(range(len(rows)), [r["count"] for r in rows],
                           color=[STAGE_COLORS.get(r["stage"], "#999") for r in rows], height=0.7)
            self._mark(bars)
            ax.set_yticks(range(len(rows)), [_short(f'{r["reason"]}', 48) for r in rows])
            ax.bar_label(bars, padding=2, fontsize=8)
            ax.set_xlabel("rejected examples")
            return fig

        return self.render(build)

    def generation(self, cells: list[dict]) -> str:
        """Requests per language: valid, rejected and failed, stacked."""
        langs = sorted({c["lang"] for c in cells})
        tot = {lang: {k: sum(c[k] for c in cells if c["lang"] == lang) for k in ("valid", "rejects", "failed")}
               for lang in langs}

        def build():
            fig = self._figure(9, 0.3 * len(langs) + 1.2)
            ax = fig.subplots()
            left = [0] * len(langs)
            for k, color in (("valid", "#54A24B"), ("rejects", "#F58518"), ("failed", "#E45756")):
                w = [tot[lang][k] for lang in langs]
                bars = ax.barh(range(len(langs)), w, left=left, color=color, height=0.7, label=k)
                self._mark(bars)
                left = [a + b for a, b in zip(left, w)]
            ax.set_yticks(range(len(langs)), langs)
            ax.invert_yaxis()
            ax.set_xlabel("LLM requests")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
            return fig

        return self.render(build)

    def similarity(self, per_task: dict[str, dict[str, list[float]]]) -> str:
        """Per task: histogram of the positive's similarity and of the mined negatives' similarity to the anchor."""
        tasks = sorted(per_task)

        def build():
            import numpy as np

            ncols = min(3, len(tasks))
            nrows = -(-len(tasks) // ncols)
            fig = self._figure(3.4 * ncols + 0.6, 2.3 * nrows + 0.5)
            axes = fig.subplots(nrows, ncols, squeeze=False)
            for ax in axes.flat[len(tasks):]:
                ax.set_visible(False)
            for ax, task in zip(axes.flat, tasks):
                neg, pos = per_task[task]["negative"], per_task[task]["positive"]
                both = np.array(neg + pos, dtype=float)
                bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 31) if both.size else 10
                for vals, color, label in ((pos, "#54A24B", "positive"), (neg, "#E45756", "hard negative")):
                    if vals:
                        # density: an example has one positive but several negatives; shapes compare, not counts
                        _, _, patches = ax.hist(vals, bins=bins, color=color, alpha=0.55, label=label, density=True)
                        self._mark(patches)
                ax.set_title(task, loc="left")
                ax.set_xlabel("cosine similarity to the anchor")
                ax.set_yticks([])
            h, lab = axes.flat[0].get_legend_handles_labels()
            fig.legend(h, lab, loc="outside lower center", ncols=2)
            return fig

        return self.render(build)

    def refusals(self, rows: list[dict], guards: tuple[str, ...]) -> str:
        """Per task: candidates each guard refused, stacked."""
        def build():
            fig = self._figure(9, 0.35 * len(rows) + 1.2)
            ax = fig.subplots()
            left = [0] * len(rows)
            for g in guards:
                w = [int(r.get(g) or 0) for r in rows]
                bars = ax.barh(range(len(rows)), w, left=left, color=GUARD_COLORS.get(g, "#999"), height=0.7,
                               label=g.replace("_", "-"))
                self._mark(bars)
                left = [a + b for a, b in zip(left, w)]
            ax.set_yticks(range(len(rows)), [r["task"] for r in rows])
            ax.invert_yaxis()
            ax.set_xlabel("candidates refused")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="guard")  # beside: never over a bar
            return fig

        return self.render(build)

    def training(self, curves: list[tuple[str, list[dict]]]) -> str:
        """Loss per logged step; CAM's share of masked in-batch pairs beside it when recorded."""
        masked = any("masked_share" in h for _, hist in curves for h in hist)

        def build():
            fig = self._figure(9, 2.8)
            axes = fig.subplots(1, 2 if masked else 1, squeeze=False)[0]
            for i, (name, hist) in enumerate(curves):
                color = PALETTE[i % len(PALETTE)]
                (line,) = axes[0].plot([h["step"] for h in hist], [h["loss"] for h in hist], marker="o",
                                       markersize=3, color=color, label=name)
                self._mark([line])
                if masked:
                    pts = [(h["step"], 100 * h["masked_share"]) for h in hist if "masked_share" in h]
                    (m,) = axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                                        color=color, label=name)
                    self._mark([m])
            axes[0].set_title("training loss", loc="left")
            axes[0].set_xlabel("step")
            if len(curves) > 1:
                axes[0].legend()
            if masked:
                axes[1].set_title("masked in-batch pairs (%)", loc="left")
                axes[1].set_xlabel("step")
                axes[1].set_ylim(bottom=0)
            return fig

        return self.render(build)

    def eval_bars(self, models: list[dict], kind: str) -> str:
        """Grouped bars: per language (and ALL), one bar per model; score x100."""
        langs = sorted({lang for m in models for lang, v in m["result"]["languages"].items()
                        if v.get(kind) is not None})
        cols = [*langs, "ALL"]

        def score(m: dict, lang: str):
            v = (m["result"].get(f"{kind}_macro") if lang == "ALL"
                 else (m["result"]["languages"].get(lang) or {}).get(kind))
            return None if v is None else 100 * v

        def build():
            fig = self._figure(max(6.0, 0.55 * len(cols) * max(1, len(models)) / 2 + 2), 3.0)
            ax = fig.subplots()
            width = 0.8 / len(models)
            baselines = itertools.cycle(ROLE_COLORS["baseline"])
            for i, m in enumerate(models):
                color = next(baselines) if m["role"] == "baseline" else ROLE_COLORS[m["role"]]
                xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(cols))]
                vals = [score(m, c) for c in cols]
                bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                              width=width * 0.95, color=color, label=f'{m["label"]} ({m["role"]})')
                self._mark(bars)
            ax.set_xticks(range(len(cols)), cols)
            ax.set_ylabel(("nDCG@10" if kind == "retrieval" else "accuracy") + " x100")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
            return fig

        return self.render(build)


def _segment(r: dict, seg: str, stages: list[str]) -> int:
    """Width of one funnel segment: kept, the examples a stage removed, or 'other' (removed by no filter stage
    shown: a superseded product version)."""
    if seg == "kept":
        return int(r["kept"])
    seq = [int(r["generated"]), *[int(r[s]) for s in stages]]
    if seg == "other":
        return max(0, seq[-1] - int(r["kept"]))
    i = stages.index(seg)
    return max(0, seq[i] - seq[i + 1])


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
