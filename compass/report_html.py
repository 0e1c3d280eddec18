"""The report's one HTML page: inline CSS, inline SVG charts, no script and no network.

jinja2 autoescapes every value (catalog text is user data); only the SVG that compass.report_plots made is
marked safe.
"""

from __future__ import annotations

import jinja2

GENERATOR = "compass report"

# A template line that starts with `{%-` or `{#- #}` continues the line before (Jinja strips the line break):
# short source lines, the same page.
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{{ generator }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>compass run report: {{ catalog_name }}</title>
<style>
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --accent: #4C78A8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans Thai",
       "Noto Sans Myanmar", "Noto Sans Khmer", "Noto Sans Lao", sans-serif; color: var(--ink); background: #fff; }
header { padding: 20px 32px 12px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { color: var(--muted); }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); position: sticky; top: 0; background: #fff; z-index: 1; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
nav a.not-run { color: var(--muted); }
main { padding: 8px 32px 40px; max-width: 1200px; }
section { margin: 22px 0 30px; }
h2 { font-size: 18px; margin: 0 0 2px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
p.what { margin: 0 0 10px; color: var(--muted); }
p.note { margin: 6px 0; }
.status { display: inline-block; font-size: 12px; padding: 1px 8px; border-radius: 10px; margin-left: 8px;
          vertical-align: 2px; font-weight: normal; }
.status.ok { background: #dafbe1; color: #116329; }
.status.not-run { background: #eef1f4; color: var(--muted); }
figure.chart { margin: 8px 0 14px; }
figure.chart svg { max-width: 100%; height: auto; }
figure.chart figcaption { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.examples { margin: 0; padding-left: 16px; }
.examples li { margin: 2px 0; }
.ex-a { font-weight: 600; }
.ex-meta { color: var(--muted); font-size: 12px; }
pre { background: var(--bg); padding: 10px; overflow-x: auto; font-size: 12px; max-height: 320px; }
.summary { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; background: var(--bg);
           padding: 10px 14px; border-left: 3px solid var(--accent); white-space: pre-wrap; }
.scroll { max-height: 420px; overflow: auto; }
</style>
</head>
<body>
<header>
<h1>compass run report</h1>
<div class="meta">catalog <code>{{ catalog }}</code> · compass {{ version }} · written {{ written_at }}</div>
</header>
<nav>{% for s in sections %}<a href="#{{ s.id }}" class="{{ s.status }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in sections %}
<section id="{{ s.id }}" class="report-section" data-status="{{ s.status }}">
<h2>{{ s.title }}<span class="status {{ s.status }}">{{ "not run" if s.status == "not-run" else "ok" }}</span></h2>
<p class="what">{{ s.what }}</p>
{% for n in s.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if s.summary %}<div class="summary">{{ s.summary | join("\\n") }}</div>{% endif %}
{% for c in s.charts %}
<figure class="chart" data-chart="{{ c.name }}">{{ c.svg | safe }}
{%- if c.caption %}<figcaption>{{ c.caption }}</figcaption>{% endif %}</figure>
{% endfor %}
{% if s.reasons %}
<h3>Rejected examples, {{ s.samples }} per reason</h3>
<table class="reasons"><tr><th>stage</th><th>reason</th><th>rejected</th><th>languages</th>
{#- #}<th>sampled examples (anchor → positive)</th></tr>
{% for r in s.reasons %}<tr><td>{{ r.stage }}</td><td><code>{{ r.reason }}</code></td><td class="num">{{ r.count }}</td>
<td>{{ r.langs | join(", ") }}</td><td><ul class="examples">{% for e in r.examples %}
<li><span class="ex-a">{{ e.anchor | truncate(90) }}</span> → {{ e.positive | truncate(90) }}
<span class="ex-meta">{{ e.lang }}/{{ e.task }}
{%- if e.duplicate_of %} · duplicate of “{{ e.duplicate_of | truncate(60) }}”
{%- elif e.full_reason != r.reason %} · {{ e.full_reason | truncate(60) }}{% endif %}
{%- if e.score is not none %} · score {{ "%.3g" | format(e.score) }}{% endif %}</span></li>
{% endfor %}</ul></td></tr>{% endfor %}
</table>
{% endif %}
{% for t in s.tables %}
<h3>{{ t.title }}</h3>
<div class="scroll"><table><tr>{% for c in t.cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for c in t.cols %}{% set v = row.get(c) %}
{#- #}<td class="{{ 'num' if v is number else '' }}">{{ fmt(v) }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% endfor %}
{% for p in s.pre %}<h3>{{ p.title }}</h3><pre>{{ p.text }}</pre>{% endfor %}
</section>
{% endfor %}
</main>
</body>
</html>
"""


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def render(ctx: dict) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(generator=GENERATOR, fmt=fmt, **ctx)
