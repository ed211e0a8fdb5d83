"""Configuration: assays (stains + marker rules) and analysis settings, as frozen dataclasses.

Everything physical is in microns. Assays are data (TOML), not code branches: the presets shipped in
``senpath/presets/assays.toml`` can be extended or overridden by a user TOML file of the same shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from senpath.stain import REFERENCE_STAINS

#: Compartments and statistics a marker rule may name (the same as :mod:`senpath.measure` measures).
COMPARTMENTS = ("nucleus", "cytoplasm", "cell", "perinuclear", "nucleus_perinuclear")
STATISTICS = ("mean", "median", "p75", "p90", "max")


class ConfigError(ValueError):
    """An invalid configuration or assay definition; the message says what to change."""


@dataclass(frozen=True)
class MarkerRule:
    """How one marker is called positive.

    Attributes
    ----------
    name : marker name used in column names (``ki67``, ``p16``, ``sabgal``).
    stain : the chromogen that reports it (a stain of the assay).
    compartment : one of :data:`COMPARTMENTS` (see :mod:`senpath.measure`).
    threshold_od : positive when the compartment's statistic of the stain OD is at least this.
    bins_od : three increasing OD edges for intensity bins 1+, 2+, 3+ (H-score).
    statistic : one of :data:`STATISTICS`; the per-cell value is the column
        ``{stain}_od_{statistic}_{compartment}``.
    """

    name: str
    stain: str
    compartment: str
    threshold_od: float = 0.15
    bins_od: tuple[float, float, float] = (0.15, 0.375, 0.70)
    statistic: str = "mean"


@dataclass(frozen=True)
class Assay:
    """A staining protocol: its stains, the stains that mark nuclei, and its marker rules."""

    name: str
    description: str
    stains: tuple[str, ...]
    nuclear_stains: tuple[str, ...]
    markers: tuple[MarkerRule, ...]
    #: cell phenotype -> required calls, e.g. {"senescent": ("sabgal+", "ki67-")}
    phenotypes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: stain -> (R, G, B) OD vector overriding the reference vector (a lab's measured profile)
    stain_vectors: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    #: stain -> degrees a per-slide estimate may turn from the prior (default 15, see senpath.stain)
    stain_tolerance_deg: Mapping[str, float] = field(default_factory=dict)

    def marker(self, name: str) -> MarkerRule:
        """The rule for marker ``name``."""
        for rule in self.markers:
            if rule.name == name:
                return rule
        raise KeyError(f"assay {self.name!r} has no marker {name!r}")


def _parse_assay(name: str, raw: Mapping[str, Any], *, source: str) -> Assay:
    where = f"assay {name!r} in {source}"
    try:
        stains = tuple(raw["stains"])
    except KeyError:
        raise ConfigError(
            f'{where}: missing \'stains\' (a list such as ["hematoxylin", "dab"])'
        ) from None
    custom = dict(raw.get("stain_vectors", {}))
    vectors: dict[str, tuple[float, float, float]] = {}
    for stain, vec in custom.items():
        try:
            v = tuple(float(x) for x in vec)
        except (TypeError, ValueError):
            v = ()
        if len(v) != 3 or min(v) < 0 or max(v) <= 0:
            raise ConfigError(
                f"{where}: stain_vectors.{stain} must be three non-negative OD values (R, G, B), "
                f"not all zero; got {vec!r}"
            )
        vectors[str(stain)] = (v[0], v[1], v[2])
    for stain in stains:
        if stain not in REFERENCE_STAINS and stain not in custom:
            raise ConfigError(
                f"{where}: unknown stain {stain!r}; use one of {sorted(REFERENCE_STAINS)} "
                "or give its OD vector under [assay.NAME.stain_vectors]"
            )
    if not 2 <= len(stains) <= 3:
        raise ConfigError(f"{where}: colour deconvolution needs 2 or 3 stains, got {len(stains)}")
    tolerance: dict[str, float] = {}
    for stain, deg in dict(raw.get("stain_tolerance_deg", {})).items():
        if stain not in stains or not isinstance(deg, int | float) or not 0 < deg <= 90:
            raise ConfigError(
                f"{where}: stain_tolerance_deg.{stain} must name one of the assay's stains "
                f"{list(stains)} and be an angle in degrees in (0, 90]; got {deg!r}"
            )
        tolerance[str(stain)] = float(deg)
    nuclear = tuple(raw.get("nuclear_stains", stains[:1]))
    markers = []
    for m in raw.get("marker", []):
        rule = MarkerRule(
            name=str(m["name"]),
            stain=str(m["stain"]),
            compartment=str(m.get("compartment", "nucleus")),
            threshold_od=float(m.get("threshold_od", 0.15)),
            bins_od=tuple(float(b) for b in m.get("bins_od", (0.15, 0.375, 0.70))),  # type: ignore[arg-type]
            statistic=str(m.get("statistic", "mean")),
        )
        if rule.stain not in stains:
            raise ConfigError(
                f"{where}: marker {rule.name!r} uses stain {rule.stain!r}, not in {stains}"
            )
        if rule.compartment not in COMPARTMENTS:
            raise ConfigError(
                f"{where}: marker {rule.name!r} compartment must be one of {COMPARTMENTS}"
            )
        if rule.statistic not in STATISTICS:
            raise ConfigError(
                f"{where}: marker {rule.name!r} statistic {rule.statistic!r} must be one of "
                f"{STATISTICS}"
            )
        if len(rule.bins_od) != 3 or list(rule.bins_od) != sorted(rule.bins_od):
            raise ConfigError(
                f"{where}: marker {rule.name!r} bins_od must be 3 increasing OD values"
            )
        markers.append(rule)
    names = {m.name for m in markers}
    phenotypes: dict[str, tuple[str, ...]] = {}
    for pheno, calls in dict(raw.get("phenotype", {})).items():
        for call in calls:
            if call[-1:] not in "+-" or call[:-1] not in names:
                raise ConfigError(
                    f"{where}: phenotype {pheno!r} term {call!r} must be a marker of this assay "
                    f"followed by + or - (markers: {sorted(names)})"
                )
        phenotypes[str(pheno)] = tuple(calls)
    return Assay(
        name=name,
        description=str(raw.get("description", "")),
        stains=stains,
        nuclear_stains=nuclear,
        markers=tuple(markers),
        phenotypes=phenotypes,
        stain_vectors=vectors,
        stain_tolerance_deg=tolerance,
    )


def load_assays(extra: str | Path | None = None) -> dict[str, Assay]:
    """Load the shipped assay presets, then any assays from the user TOML file ``extra``.

    A user assay with a preset's name replaces it.
    """
    text = resources.files("senpath").joinpath("presets/assays.toml").read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    assays = {
        n: _parse_assay(n, a, source="senpath presets") for n, a in raw.get("assay", {}).items()
    }
    if extra is not None:
        path = Path(extra)
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for n, a in user.get("assay", {}).items():
            assays[n] = _parse_assay(n, a, source=str(path))
    return assays


def get_assay(name: str, assays: Mapping[str, Assay] | None = None) -> Assay:
    """Look up an assay by name, with an error listing the known ones."""
    assays = load_assays() if assays is None else assays
    try:
        return assays[name]
    except KeyError:
        raise ConfigError(
            f"unknown assay {name!r}; known assays: {', '.join(sorted(assays))}"
        ) from None


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of one analysis run (all distances in µm).

    Attributes
    ----------
    analysis_mpp : resolution (µm/px) at which nuclei are segmented and measured.
    tile_size_um : side of an analysis tile (without halo).
    halo_um : context added around each tile; must exceed the largest nucleus diameter.
    cytoplasm_um : cytoplasm ring width around each nucleus (QuPath's default cell expansion is 5 µm).
    min_nucleus_area_um2, max_nucleus_area_um2 : nuclei outside this range are discarded.
    segmenter : ``auto`` (the shipped CNN when available, else classical), ``cnn`` or ``classical``.
    model : a nucleus model of your own for the CNN: the path of its ``nucleus_unet.json`` (or its
        folder), as written by ``python -m senpath.segment.export``; ``None`` = the shipped model.
    device : ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    tissue_mpp : resolution of the tissue mask.
    stain_vectors : ``estimate`` (per slide, Macenko with the assay's vectors as the prior and guard
        rails; see :func:`senpath.stain.estimate_stains`) or ``preset`` (the assay's vectors as given).
    auto_threshold : when true, each marker's threshold is set per slide from its OD distribution
        (Otsu, bounded to ``auto_threshold_bounds_od``); off by default: fixed thresholds compare slides.
    auto_threshold_bounds_od : (low, high) OD bounds of an automatic threshold.
    """

    analysis_mpp: float = 0.5
    tile_size_um: float = 512.0
    halo_um: float = 24.0
    cytoplasm_um: float = 5.0
    min_nucleus_area_um2: float = 10.0
    max_nucleus_area_um2: float = 400.0
    segmenter: str = "auto"
    model: str | None = None
    device: str = "auto"
    tissue_mpp: float = 8.0
    stain_vectors: str = "estimate"
    auto_threshold: bool = False
    auto_threshold_bounds_od: tuple[float, float] = (0.08, 0.5)

    def __post_init__(self) -> None:
        if self.analysis_mpp <= 0:
            raise ConfigError("analysis_mpp must be > 0 µm/px (0.5 is typical for 20x)")
        if self.segmenter not in ("auto", "cnn", "classical"):
            raise ConfigError("segmenter must be 'auto', 'cnn' or 'classical'")
        if self.model is not None and self.segmenter == "classical":
            raise ConfigError("model is for the CNN segmenter: drop it or use segmenter 'cnn'")
        if self.stain_vectors not in ("estimate", "preset"):
            raise ConfigError("stain_vectors must be 'estimate' (per slide) or 'preset'")
        lo, hi = (float(x) for x in self.auto_threshold_bounds_od)
        if not 0 <= lo < hi:
            raise ConfigError(
                "auto_threshold_bounds_od must be two OD values, low < high, e.g. [0.08, 0.5]"
            )
        object.__setattr__(self, "auto_threshold_bounds_od", (lo, hi))
        if self.halo_um < 2 * (self.max_nucleus_area_um2 / 3.14159) ** 0.5 * 0.5:
            raise ConfigError("halo_um must be at least the largest nucleus diameter")

    def replace(self, **changes: Any) -> AnalysisConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the settings (part of a result's identity for resume)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """Read ``[analysis]`` settings from a TOML file (missing keys keep their defaults)."""
    if path is None:
        return AnalysisConfig()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from exc
    section = raw.get("analysis", {})
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{p}: unknown [analysis] keys {sorted(unknown)}; known: {sorted(known)}")
    if isinstance(section.get("model"), str):  # a relative model path is relative to the TOML file
        section = {**section, "model": str((p.parent / section["model"]).resolve())}
    return AnalysisConfig(**section)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def stain_profile_toml(
    assay: Assay,
    *,
    vectors: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, float] | None = None,
    name: str | None = None,
    stain_vectors: str | None = "preset",
) -> str:
    """A lab's stain profile as TOML text: the assay with measured vectors and thresholds.

    Write it once (e.g. from the ``stain_vectors`` and thresholds in a representative slide's
    ``provenance.json``), then pass it to every run of the batch with ``senpath run --config``: it
    defines assay ``name`` (use that name in the sample sheet) and, with ``stain_vectors = "preset"``,
    makes the pipeline use the profile's vectors as given instead of re-estimating them per slide.

    Parameters
    ----------
    assay : the assay the profile refines.
    vectors : stain → (R, G, B) OD vector; stains left out keep their current vectors.
    thresholds : marker → OD threshold; markers left out keep theirs.
    name : the profile's assay name (default: the assay's, which replaces the preset).
    stain_vectors : value of ``[analysis] stain_vectors`` to write (``None``: no ``[analysis]`` table).
    """
    from senpath.stain import REFERENCE_STAINS as REF

    name = name or assay.name
    vectors = dict(vectors or {})
    unknown = set(vectors) - set(assay.stains)
    if unknown:
        raise ConfigError(
            f"profile vectors for {sorted(unknown)}: not stains of assay {assay.name!r} {assay.stains}"
        )
    unknown = set(thresholds or {}) - {m.name for m in assay.markers}
    if unknown:
        raise ConfigError(
            f"profile thresholds for {sorted(unknown)}: not markers of assay {assay.name!r}"
        )
    key = json.dumps(name)
    lines = [
        f"# senpath stain profile for assay {name!r} (from {assay.name!r}); pass with --config.",
        "# stain_vectors: OD vectors (R, G, B) of this lab's stains; any length, normalised on use.",
        "# marker threshold_od / bins_od: OD of the marker's statistic in its compartment.",
        "",
    ]
    if stain_vectors is not None:
        lines += ["[analysis]", f"stain_vectors = {_toml_value(stain_vectors)}", ""]
    lines += [
        f"[assay.{key}]",
        f"description = {_toml_value(assay.description or name)}",
        f"stains = {_toml_value(list(assay.stains))}",
        f"nuclear_stains = {_toml_value(list(assay.nuclear_stains))}",
        "",
        f"[assay.{key}.stain_vectors]",
    ]
    for stain in assay.stains:
        vec = vectors.get(stain, assay.stain_vectors.get(stain, REF.get(stain)))
        if vec is None:  # _parse_assay refuses stains without a vector; be explicit here too
            raise ConfigError(f"stain {stain!r} of assay {assay.name!r} has no OD vector")
        lines.append(f"{stain} = {_toml_value([round(float(x), 6) for x in vec])}")
    lines.append("")
    if assay.stain_tolerance_deg:
        lines.append(f"[assay.{key}.stain_tolerance_deg]")
        lines += [f"{st} = {_toml_value(float(d))}" for st, d in assay.stain_tolerance_deg.items()]
        lines.append("")
    if assay.phenotypes:
        lines.append(f"[assay.{key}.phenotype]")
        lines += [f"{p} = {_toml_value(list(t))}" for p, t in assay.phenotypes.items()]
        lines.append("")
    for rule in assay.markers:
        thr = float((thresholds or {}).get(rule.name, rule.threshold_od))
        lines += [
            f"[[assay.{key}.marker]]",
            f"name = {_toml_value(rule.name)}",
            f"stain = {_toml_value(rule.stain)}",
            f"compartment = {_toml_value(rule.compartment)}",
            f"statistic = {_toml_value(rule.statistic)}",
            f"threshold_od = {_toml_value(thr)}",
            f"bins_od = {_toml_value([float(b) for b in rule.bins_od])}",
            "",
        ]
    return "\n".join(lines)
