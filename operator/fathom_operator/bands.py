"""What a solve-rate stage may stop sampling early for (pure): the solveRate bands of its readers.

A solve-rate stage samples adaptively (fathom_jobs.stages.solve_rate) when it is given `stopOutside`:
it stops sampling a problem once that problem's rate can fall in none of the bands. The bands are those
of every curate stage that reads the stage - explicit or from its preset (CurateParams.effective()) -
each at the cap that curate stage will read, resolved against the solve-rate stage's caps exactly as
the curate Job resolves it. Render passes them into the Job's parameters when the recipe leaves
`stopOutside` out.

Only which final rates some band holds matters, so the bands are passed in a canonical form: per cap,
the union of the readers' bands on the grid of rates k can give (0, 1/k, ..., 1), as inclusive bands
between grid points (k = 8, curriculum 0.2 < s < 0.6 and shortest chains 0.1 <= s <= 0.4 at 16,384:
one band 0.125 <= s <= 0.5 at 16,384). They are part of the stage's fingerprint: an edit to a reader
that changes that union (a band, its cap, a preset, a reader added or removed) reruns the sampling and
everything downstream of it; other curate edits do not. `stopOutside: []` on the stage pins full
sampling and takes the readers out of its fingerprint.

No early stop ([]) when nothing in the recipe reads the stage (its samples may be read by hand), or
when some reader's band holds every rate (e.g. it has no solveRate band).
"""

from __future__ import annotations

from typing import Any

from fathom_jobs import specs

from .api.recipe import RecipeSpec, StageCommon, stage_params


def readers(spec: RecipeSpec, stage_name: str) -> list[specs.CurateParams]:
    """The curate stages whose `data` is this stage."""
    found = []
    for stage in spec.stages:
        params = stage_params(stage)
        if isinstance(params, specs.CurateParams) and params.data == stage_name:
            found.append(params)
    return found


def reader_band(reader: specs.CurateParams, caps: list[int]) -> dict[str, Any] | None:
    """The reader's solveRate band with the cap it reads; None when it has no band."""
    select = reader.effective().select
    band = select.solve_rate if select else None
    if band is None:
        return None
    try:
        cap = reader.selection_cap(caps)
    except ValueError:
        cap = band.cap  # a cap the stage does not sample: its Job refuses it, naming the cap, before sampling
    return band.model_copy(update={"cap": cap}).model_dump(by_alias=True, exclude_none=True, mode="json")


def canonical(bands: list[dict[str, Any]], k: int, caps: list[int]) -> list[dict[str, Any]]:
    """Per cap, the union of the bands on the rate grid 0, 1/k, ..., 1 as inclusive bands between grid
    points, caps ascending; [] when a cap's union holds every rate (no problem could ever stop). A band
    at a cap the stage does not sample is kept as written (the Job refuses it, naming the cap)."""
    held: dict[int, set[int]] = {}
    unknown = []
    for band in bands:
        model = specs.SolveRateBand.model_validate(band)
        if model.cap not in caps:
            unknown.append(band)
            continue
        held.setdefault(model.cap, set()).update(n for n in range(k + 1) if model.contains(n / k))
    if any(len(counts) == k + 1 for counts in held.values()):
        return []
    out = []
    for cap in sorted(held):
        counts = sorted(held[cap])
        runs = [[n] for n in counts[:1]]
        for n in counts[1:]:
            if n == runs[-1][-1] + 1:
                runs[-1].append(n)
            else:
                runs.append([n])
        out += [{"atLeast": run[0] / k, "atMost": run[-1] / k, "cap": cap} for run in runs]
    return out + unknown


def stop_outside(spec: RecipeSpec, stage: StageCommon) -> list[dict[str, Any]]:
    """`stopOutside` for a solve-rate stage: its readers' bands in canonical form; [] for no early stop."""
    params = stage_params(stage)
    if not isinstance(params, specs.SolveRateParams):
        return []
    bands = [reader_band(r, params.caps()) for r in readers(spec, stage.name)]
    if not bands or any(b is None for b in bands):
        return []
    return canonical([b for b in bands if b is not None], params.samples, params.caps())
