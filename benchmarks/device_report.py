"""The device check's Markdown report, and the layer summary it shows."""

from __future__ import annotations

import math

from benchmarks.device_numerics import OFFSET_TOLERANCE
from benchmarks.device_numerics import TOLERANCE

SECTIONS = ("bandwidth", "numerics", "layers", "train_step")
PATHS = ("pallas", "fused", "reference")  # jaxnorm's implementations the layers section times
BYTES_FORMULA = (
  "minimal traffic per call: forward n·(|x| + |y|); forward+backward "
  "n·(|x| + |y| + |dy| + |dx|), with n the element count, |a| the bytes per "
  "element of a in that implementation (|dy| = |y|, |dx| = |x|); parameters "
  "and statistics are ignored. fraction_of_copy = (bytes / seconds) / the "
  "measured JAX copy bandwidth (read + write of x + 1)."
)
LAYER_NOTES = (
  "JAX: float32 scale and bias (bfloat16 inputs give float32 outputs); torch: parameters and output in the "
  "input's dtype. flax's GroupNorm takes channels last: its NCHW figure includes two transposes. pallas is "
  "skipped where the kernels do not cover the case (channels first, or a channel count that is not a power "
  "of two up to 2048, or no reduced axis besides the channels: it would time the fused path again)."
)


def _cell(entry: dict | None) -> str:
  if not entry:
    return "–"
  if "seconds" in entry:
    fraction = entry.get("fraction_of_copy")
    text = f"{entry['seconds'] * 1e6:.1f}" + (f" ({fraction:.2f})" if fraction is not None else "")
    inside = entry.get("in_program")
    if inside:
      text += f"; {inside['seconds'] * 1e6:.1f}" + (
        f" ({inside['fraction_of_copy']:.2f})" if inside.get("fraction_of_copy") is not None else ""
      )
    return text
  return "error" if "error" in entry else "skip"


def _ratio(results: dict, slow: str, fast: str) -> str:
  a, b = results.get(slow, {}), results.get(fast, {})
  if "seconds" in a and "seconds" in b:
    return f"{a['seconds'] / b['seconds']:.2f}×"
  return "–"


def _geomean(values) -> float | None:
  values = [v for v in values if v and math.isfinite(v)]
  return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def layer_summary(rows: list[dict]) -> list[dict]:
  """Geometric means over the shapes of a family, per norm/layout/dtype/mode.

  ``X_over_Y`` is X's time over jaxnorm path Y's; ``best`` is the fastest
  of jaxnorm's paths (:data:`PATHS`) per shape.
  """
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    if "results" in r:
      key = (r["family"], r["norm"], r["layout"], r["dtype"], r["mode"])
      groups.setdefault(key, []).append(r["results"])
  seconds = lambda res, k: res.get(k, {}).get("seconds")
  out = []
  for (family, norm, layout, dtype, mode), results in groups.items():
    best = [min(filter(None, (seconds(res, k) for k in PATHS)), default=None) for res in results]
    entry = {"family": family, "norm": norm, "layout": layout, "dtype": dtype, "mode": mode, "shapes": len(results)}
    for peer in ("flax", "torch"):
      paths = [(p, [seconds(res, p) for res in results]) for p in ("fused", "reference")] + [("best", best)]
      for path, times in paths:
        entry[f"{peer}_over_{path}"] = _geomean(
          seconds(res, peer) / t for res, t in zip(results, times) if t and seconds(res, peer)
        )
    entry["fused_over_pallas"] = _geomean(
      seconds(res, "fused") / seconds(res, "pallas")
      for res in results
      if seconds(res, "pallas") and seconds(res, "fused")
    )
    entry["best_fraction_of_copy"] = _geomean(
      max((res.get(k, {}).get("fraction_of_copy") or 0) for k in PATHS) for res in results
    )
    # The same from the in-program timing (one dispatch for many calls).
    inside = lambda res, k: res.get(k, {}).get("in_program", {})
    entry["flax_over_fused_in_program"] = _geomean(
      inside(res, "flax")["seconds"] / inside(res, "fused")["seconds"]
      for res in results
      if "seconds" in inside(res, "flax") and "seconds" in inside(res, "fused")
    )
    entry["best_fraction_of_copy_in_program"] = _geomean(
      max((inside(res, k).get("fraction_of_copy") or 0) for k in PATHS) for res in results
    )
    out.append(entry)
  return out


def _x(value, digits=2, suffix="×") -> str:
  return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _markdown_layers(lay: dict, brief: bool = False) -> list[str]:
  rows = lay.get("rows", [])
  lines = [
    "",
    "## Layers",
    "",
    BYTES_FORMULA,
    f"{lay.get('timing', '')}; {LAYER_NOTES}",
    "",
    "Geometric means over the shapes of each family (`best`: the fastest of pallas, fused and reference per shape):",
    "",
    "| family | norm | layout | dtype | mode | flax ÷ fused | flax ÷ reference | flax ÷ best | torch ÷ fused "
    "| torch ÷ best | fused ÷ pallas | best, fraction of copy | in program: flax ÷ fused "
    "| in program: best, fraction of copy |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for e in layer_summary(rows):
    lines.append(
      f"| {e['family']} | {e['norm']} | {e['layout']} | {e['dtype']} | {e['mode']} | "
      f"{_x(e['flax_over_fused'])} | {_x(e['flax_over_reference'])} | {_x(e['flax_over_best'])} | "
      f"{_x(e['torch_over_fused'])} | "
      f"{_x(e['torch_over_best'])} | {_x(e['fused_over_pallas'])} | {_x(e['best_fraction_of_copy'], suffix='')} | "
      f"{_x(e['flax_over_fused_in_program'])} | {_x(e['best_fraction_of_copy_in_program'], suffix='')} |"
    )
  if brief:
    timed, skipped = sum("results" in r for r in rows), sum("skipped" in r for r in rows)
    return lines + ["", f"{timed} rows timed, {skipped} skipped."]
  lines += [
    "",
    "Every row: µs per call (fraction of copy bandwidth); after `;`, the same timed inside one program.",
    "",
    "| family | norm | shape | layout | dtype | mode | pallas | fused | reference | flax | torch "
    "| flax ÷ fused | flax ÷ pallas | flax ÷ reference | torch ÷ fused |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    norm = f"{r['norm']}{r['groups']}" if r["norm"] == "gn" else r["norm"]
    shape = "×".join(map(str, r["shape"]))
    head = f"| {r['family']} | {norm} | {shape} | {r['layout']} | {r['dtype']} | {r['mode']} | "
    if "results" not in r:
      note = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r.get('error', '?')[:100]}"
      lines.append(head + note + " |" + " |" * 8)
      continue
    res = r["results"]
    cells = [_cell(res.get(k)) for k in (*PATHS, "flax", "torch")]
    ratios = [_ratio(res, "flax", k) for k in ("fused", "pallas", "reference")] + [_ratio(res, "torch", "fused")]
    lines.append(head + " | ".join(cells + ratios) + " |")
  errors = sorted({f"{k}: {v['error'][:200]}" for r in rows for k, v in r.get("results", {}).items() if "error" in v})
  if errors:
    lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
  lines += ["", f"{sum('results' in r for r in rows)} rows timed, {sum('skipped' in r for r in rows)} skipped."]
  return lines


def _markdown_numerics(num: dict, brief: bool = False) -> list[str]:
  cases = num.get("cases", [])
  lines = [
    "",
    "## Numerics (float32 on the device against float64 NumPy on the host)",
    "",
    f"{sum(bool(r.get('passed')) for r in cases)} of {len(cases)} passed; the Pallas kernels ran in "
    f"{sum(r.get('path') == 'pallas' for r in cases)} cases. Error: max |device − reference| / max |reference| "
    f"per array; tolerance {TOLERANCE:g} ({OFFSET_TOLERANCE:g} for the 1e4-offset case).",
  ]
  shown = [r for r in cases if not (brief and r.get("passed"))]
  if shown:
    lines += [
      "",
      "| case | shape | impl | path (expected) | y | mean | var | dx | dscale | dbias | dx of stats | passed |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
  for r in shown:
    e = r.get("errors", {})
    cells = [f"{e[k]:.1e}" if k in e else "–" for k in ("y", "mean", "var", "dx", "dscale", "dbias", "dx_of_stats")]
    verdict = "yes" if r.get("passed") else "**NO**" + (f": {r['error'][:100]}" if "error" in r else "")
    lines.append(
      f"| {r['name']} | {'×'.join(map(str, r['shape']))} | {r['implementation']} | "
      f"{r.get('path', '?')} ({r['expected_path']}) | " + " | ".join(cells) + f" | {verdict} |"
    )
  return lines


def _markdown_train(tr: dict) -> list[str]:
  lines = [
    "",
    f"## Training step: {tr.get('model', '')}",
    "",
    f"jaxnorm implementation: {tr.get('jaxnorm_implementation', '?')}.",
    "",
    "| batch | norm | library | temp memory (MiB) | images/s | jaxnorm ÷ flax images/s |",
    "|---|---|---|---|---|---|",
  ]
  for r in tr.get("rows", []):
    if "images_per_sec" not in r:
      note = r.get("skipped") or "error: " + r.get("error", "?")[:100]
      lines.append(f"| {r['batch']} | – | – | – | {note} | |")
      continue
    ips = r["images_per_sec"]
    for key, mem in r["memory"].items():
      norm, library = key.split("/")
      ratio = _x(ips[key] / ips[f"{norm}/flax"]) if library != "flax" else ""
      mib = mem["temp_bytes"] / 2**20
      lines.append(f"| {r['batch']} | {norm} | {library} | {mib:.1f} | {ips[key]:.0f} | {ratio} |")
  return lines


def markdown(result: dict, brief: bool = False) -> str:
  """The report; ``brief``: without the passing numerics cases and the
  per-shape layer rows (what the run prints at the end)."""
  env = result.get("environment", {})
  versions = env.get("versions", {})
  sections = result.get("sections", {})
  lines = [
    "# Device check",
    "",
    f"Device: **{env.get('device_kind')}** ({env.get('platform')}); commit {env.get('git_commit')}; "
    + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    + f"; Python {env.get('python')}.",
    f"Command: `{result['command']}`{' (smoke: toy sizes)' if result['smoke'] else ''}. "
    f"Budget {result['budget_s']:g} s; wall time {result.get('wall_s', float('nan')):.1f} s"
    + (" (**interrupted by the watchdog**)" if result.get("interrupted") else "")
    + ".",
    "",
    "| section | status | wall time (s) |",
    "|---|---|---|",
  ]
  for name in SECTIONS:
    s = sections.get(name, {})
    wall = f"{s['wall_s']:.1f}" if "wall_s" in s else "–"
    lines.append(f"| {name} | {s.get('status', 'not run')} | {wall} |")
  for name in SECTIONS:
    s = sections.get(name, {})
    if s.get("status") in ("error", "interrupted"):
      lines += ["", f"**{name} {s['status']}**: {s.get('error')}"]
  bw = sections.get("bandwidth", {})
  if "bytes_per_s" in bw:
    lines += ["", "## Copy bandwidth", "", f"JAX `x + 1`: {bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['formula']})."]
    if "torch_copy" in bw:
      lines[-1] += f" PyTorch `copy_`: {bw['torch_copy']['bytes_per_s'] / 1e9:.1f} GB/s."
  if "cases" in sections.get("numerics", {}):
    lines += _markdown_numerics(sections["numerics"], brief)
  if "rows" in sections.get("layers", {}):
    lines += _markdown_layers(sections["layers"], brief)
  if "rows" in sections.get("train_step", {}):
    lines += _markdown_train(sections["train_step"])
  return "\n".join(lines) + "\n"
