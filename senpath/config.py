"""Configuration: assays (stains + marker rules) and analysis settings, as frozen dataclasses.

Everything physical is in microns. Assays are data (TOML), not code branches: the presets shipped in
``senpath/presets/assays.toml`` can be extended or overridden by a user TOML file of the same shape.
"""

from __future__ import annotations

import dataclasses
import difflib
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

from senpath._schema import Problems, Setting, dotted, shown
from senpath.stain import REFERENCE_STAINS
from senpath.tiling import min_halo_um

#: Compartments and statistics a marker rule may name (the same as :mod:`senpath.measure` measures).
COMPARTMENTS = ("nucleus", "cytoplasm", "cell", "perinuclear", "nucleus_perinuclear")
STATISTICS = ("mean", "median", "p75", "p90", "max")


class ConfigError(ValueError):
    """Invalid settings or assay definitions: one line per problem, each saying what to change.

    Attributes
    ----------
    problems : list of str
        The lines of the message, one per problem (a settings file's name the file and the key).
    """

    def __init__(self, *problems: str) -> None:
        self.problems = [line for p in problems for line in str(p).splitlines() if line.strip()]
        super().__init__("\n".join(self.problems))


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
    labelling_index : the marker is a proliferation marker (Ki67) whose % positive is reported as
        the labelling index (``<marker>_labelling_index`` in summaries and exports). Not part of the
        rule's ``repr``, which identifies a run for resume: it changes no call.
    """

    name: str
    stain: str
    compartment: str
    threshold_od: float = 0.15
    bins_od: tuple[float, float, float] = (0.15, 0.375, 0.70)
    statistic: str = "mean"
    labelling_index: bool = field(default=False, repr=False)


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
    #: what the objects are: "nuclei" (counterstained sections) or "cells" (culture photos with no
    #: nuclear counterstain: whole cells, see senpath.segment.whole_cell). Out of the repr (a run's
    #: identity) unless set: senpath.slide_analysis.run_identity adds it then.
    objects: str = field(default="nuclei", repr=False)
    #: counterstain level (log10 OD) a faintly counterstained slide is brought up to for the CNN
    #: (senpath.segment.counterstain; the counterstain is the first of nuclear_stains), or None:
    #: never. Out of the repr unless set, as objects.
    counterstain_reference_od: float | None = field(default=None, repr=False)

    def marker(self, name: str) -> MarkerRule:
        """The rule for marker ``name``."""
        for rule in self.markers:
            if rule.name == name:
                return rule
        raise KeyError(f"assay {self.name!r} has no marker {name!r}")


#: Sections of a settings file: ``[analysis]`` and ``[assay.NAME]`` (one per assay).
SECTIONS = ("analysis", "assay")
#: Keys of an ``[assay.NAME]`` table.
ASSAY_KEYS = (
    "description", "stains", "nuclear_stains", "stain_vectors", "stain_tolerance_deg", "phenotype",
    "marker", "objects", "counterstain_reference_od",
)  # fmt: skip
#: What an assay's objects may be (``objects`` of an ``[assay.NAME]`` table).
_OBJECTS = Setting("choice", choices=("nuclei", "cells"))
#: Highest OD a threshold or bin edge may take: an 8-bit RGB pixel reaches log10(255) ≈ 2.4 OD.
OD_MAX = 3.0

#: Type and range of every ``[analysis]`` setting (a field of :class:`AnalysisConfig`).
ANALYSIS_SETTINGS: dict[str, Setting] = {
    "analysis_mpp": Setting("number", "µm/px", 0, 10, low_open=True, example="0.5 (20x)"),
    "tile_size_um": Setting("number", "µm", 32, 8192, example="512"),
    "halo_um": Setting("number", "µm", 0, 500, low_open=True, example="24"),
    "cytoplasm_um": Setting("number", "µm", 0, 50, example="5.0"),
    "min_nucleus_area_um2": Setting("number", "µm²", 0, 10_000, example="10"),
    "max_nucleus_area_um2": Setting("number", "µm²", 0, 10_000, low_open=True, example="400"),
    "segmenter": Setting("choice", choices=("auto", "cnn", "classical")),
    "model": Setting("string", example='"my_models/"'),
    "device": Setting(
        "string",
        pattern=r"auto|cpu|mps|cuda(:\d+)?",
        pattern_hint="use auto, cpu, cuda, cuda:N or mps",
        example='"cuda:0"',
    ),
    "precision": Setting(
        "choice", choices=("auto", "fp32", "bf16", "fp16", "onnx-fp32", "onnx-int8")
    ),
    "tissue_mpp": Setting("number", "µm/px", 0, 100, low_open=True, example="8"),
    "stain_vectors": Setting("choice", choices=("estimate", "preset")),
    "normalise_counterstain": Setting("bool"),
    "test_time_flips": Setting("bool"),
    "auto_threshold": Setting("bool"),
    "auto_threshold_bounds_od": Setting(
        "numbers", "OD", 0, OD_MAX, length=2, increasing=True, example="[0.08, 0.5]"
    ),
    "control_percentile": Setting("number", "a percentile", 50, 99.9, example="99"),
    "control_min_cells": Setting("number", "cells", 20, 1_000_000, example="200"),
}

#: Settings that only matter for slides scored from a batch's negative control: they reach a
#: slide's identity through the cut-offs themselves (:func:`senpath.slide_analysis.run_identity`),
#: so changing them does not redo the batch's other slides.
CONTROL_SETTINGS = ("control_percentile", "control_min_cells")

#: Type and range of every key of a ``[[assay.NAME.marker]]`` table.
MARKER_SETTINGS: dict[str, Setting] = {
    "name": Setting(
        "string",
        # a marker names table columns and phenotype terms ("ki67+"): no '+' or spaces in it
        pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*",
        pattern_hint="a marker name may use letters, digits, '_' and '-'",
        example='"ki67"',
    ),
    "stain": Setting("string", example='"dab"'),
    "compartment": Setting("choice", choices=COMPARTMENTS),
    "statistic": Setting("choice", choices=STATISTICS),
    "threshold_od": Setting("number", "OD", 0, OD_MAX, low_open=True, example="0.15"),
    "bins_od": Setting(
        "numbers", "OD", 0, OD_MAX, length=3, increasing=True, example="[0.15, 0.375, 0.70]"
    ),
    "labelling_index": Setting("bool"),
}
_STAIN_VECTOR = Setting("numbers", "OD", 0, None, length=3, example="[0.27, 0.57, 0.78]")
_TOLERANCE = Setting("number", "degrees", 0, 90, low_open=True, example="15")
#: An assay's ``counterstain_reference_od`` (also checks ``train --counterstain-references``).
COUNTERSTAIN_REFERENCE = Setting("number", "OD", 0, OD_MAX, low_open=True, example="0.6")


def _is_text_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _parse_marker(
    raw: Mapping[str, Any], at: tuple[str, ...], stains: tuple[str, ...], problems: Problems
) -> MarkerRule | None:
    """One ``[[assay.NAME.marker]]`` table, or ``None`` when it has problems (recorded)."""
    n_before = len(problems.lines)
    problems.unknown_keys(at, raw, MARKER_SETTINGS)
    required = {
        "name": 'give the marker\'s name, e.g. name = "ki67"',
        "stain": f"give the stain that reports it, one of the assay's stains ({', '.join(stains)})",
    }
    for key, fix in required.items():
        if key not in raw:
            problems.add(dotted(*at, key), f"is missing: {fix}")
    for key, setting in MARKER_SETTINGS.items():
        if key in raw:
            problems.check(dotted(*at, key), raw[key], setting)
    stain = raw.get("stain")
    if stains and isinstance(stain, str) and stain not in stains:
        problems.add_value(
            dotted(*at, "stain"),
            stain,
            f"is not a stain of this assay: use one of {', '.join(stains)}",
        )
    if len(problems.lines) > n_before:
        return None
    return MarkerRule(
        name=raw["name"],
        stain=raw["stain"],
        compartment=raw.get("compartment", "nucleus"),
        threshold_od=float(raw.get("threshold_od", 0.15)),
        bins_od=tuple(float(b) for b in raw.get("bins_od", (0.15, 0.375, 0.70))),  # type: ignore[arg-type]
        statistic=raw.get("statistic", "mean"),
        labelling_index=raw.get("labelling_index", False),
    )


def _parse_stains(
    raw: Mapping[str, Any], at: tuple[str, ...], problems: Problems
) -> tuple[tuple[str, ...], dict[str, tuple[float, float, float]]]:
    """The assay's stains and its own OD vectors (problems recorded; empty when unusable)."""
    key = dotted(*at, "stains")
    stains: tuple[str, ...] = ()
    value = raw.get("stains")
    if value is None:
        problems.add(
            key, 'is missing: give the assay\'s 2 or 3 stains, e.g. ["hematoxylin", "dab"]'
        )
    elif not _is_text_list(value) or not 2 <= len(value) <= 3 or len(set(value)) != len(value):
        problems.add_value(
            key,
            value,
            "is not a list of 2 or 3 different stains (colour deconvolution needs 2 or 3): "
            'e.g. ["hematoxylin", "dab"]',
        )
    else:
        stains = tuple(value)
    vectors: dict[str, tuple[float, float, float]] = {}
    given = raw.get("stain_vectors", {})
    if not isinstance(given, Mapping):
        problems.add_value(
            dotted(*at, "stain_vectors"),
            given,
            "is not a table: write stain_vectors = { dab = [0.27, 0.57, 0.78] }",
        )
        given = {}
    for stain, vec in given.items():
        vkey = dotted(*at, "stain_vectors", stain)
        if stains and stain not in stains:
            problems.add(
                vkey,
                f"is not a stain of this assay: give vectors for its stains ({', '.join(stains)})",
            )
        elif problems.check(vkey, vec, _STAIN_VECTOR):
            if max(float(x) for x in vec) <= 0:
                problems.add_value(vkey, vec, "is all zero: give the stain's (R, G, B) OD vector")
            else:
                vectors[str(stain)] = (float(vec[0]), float(vec[1]), float(vec[2]))
    for stain in stains:
        if stain not in REFERENCE_STAINS and stain not in given:
            close = difflib.get_close_matches(stain, list(REFERENCE_STAINS), n=1)
            hint = f"did you mean {json.dumps(close[0])}? " if close else ""
            problems.add(
                key,
                f"names unknown stain {json.dumps(stain)}: {hint}use one of "
                f"{', '.join(sorted(REFERENCE_STAINS))} or give its OD vector under "
                f"[{dotted(*at, 'stain_vectors')}]",
            )
    return stains, vectors


def _parse_assay(name: str, raw: Any, problems: Problems) -> Assay | None:
    """One ``[assay.NAME]`` table, or ``None`` when it has problems (all recorded in ``problems``)."""
    at = ("assay", name)
    if not isinstance(raw, Mapping):
        problems.add_value(
            dotted(*at),
            raw,
            f"is not a table: write [{dotted(*at)}] on its own line, then its keys",
        )
        return None
    n_before = len(problems.lines)
    problems.unknown_keys(at, raw, ASSAY_KEYS)
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add_value(dotted(*at, "description"), description, "is not a text: quote it")
    stains, vectors = _parse_stains(raw, at, problems)
    nuclear = raw.get("nuclear_stains", list(stains[:1]))
    nkey = dotted(*at, "nuclear_stains")
    if not _is_text_list(nuclear) or not nuclear or (stains and not set(nuclear) <= set(stains)):
        problems.add_value(
            nkey,
            nuclear,
            f"is not a list of the assay's stains ({', '.join(stains)}) that mark nuclei",
        )
    tolerance: dict[str, float] = {}
    given = raw.get("stain_tolerance_deg", {})
    if not isinstance(given, Mapping):
        problems.add_value(
            dotted(*at, "stain_tolerance_deg"), given, "is not a table: e.g. { hematoxylin = 17.5 }"
        )
        given = {}
    for stain, deg in given.items():
        tkey = dotted(*at, "stain_tolerance_deg", stain)
        if stains and stain not in stains:
            problems.add(
                tkey, f"must name one of the assay's stains ({', '.join(stains)}), not {stain!r}"
            )
        elif problems.check(tkey, deg, _TOLERANCE):
            tolerance[str(stain)] = float(deg)
    mkey = dotted(*at, "marker")
    raw_markers = raw.get("marker", [])
    if isinstance(raw_markers, Mapping):
        problems.add(mkey, f"is one table: write each marker as [[{mkey}]] (double brackets)")
        raw_markers = []
    elif not isinstance(raw_markers, list) or not all(isinstance(m, Mapping) for m in raw_markers):
        problems.add_value(
            mkey, raw_markers, f"is not a list of markers: write each as [[{mkey}]] with its keys"
        )
        raw_markers = []
    markers: list[MarkerRule] = []
    first: dict[str, int] = {}
    for i, m in enumerate(raw_markers):
        rule = _parse_marker(m, (*at, f"marker[{i}]"), stains, problems)
        if rule is None:
            continue
        if rule.name in first:
            problems.add_value(
                dotted(*at, f"marker[{i}]", "name"),
                rule.name,
                f"repeats marker[{first[rule.name]}]: give each marker its own name",
            )
        first.setdefault(rule.name, i)
        markers.append(rule)
    names = sorted({str(m.get("name")) for m in raw_markers})
    phenotypes: dict[str, tuple[str, ...]] = {}
    given = raw.get("phenotype", {})
    if not isinstance(given, Mapping):
        problems.add_value(
            dotted(*at, "phenotype"), given, 'is not a table: e.g. senescent = ["sabgal+", "ki67-"]'
        )
        given = {}
    for pheno, calls in given.items():
        pkey = dotted(*at, "phenotype", pheno)
        bad = not _is_text_list(calls) or not calls
        bad = bad or any(c[-1:] not in ("+", "-") or c[:-1] not in names for c in calls)
        if bad:
            problems.add_value(
                pkey,
                calls,
                "is not a list of calls, each a marker of this assay followed by + or -: "
                f'e.g. ["{names[0] if names else "ki67"}+"] (markers: {", ".join(names) or "none"})',
            )
        else:
            phenotypes[str(pheno)] = tuple(calls)
    objects = raw.get("objects", "nuclei")
    problems.check(dotted(*at, "objects"), objects, _OBJECTS)
    reference = raw.get("counterstain_reference_od")
    if reference is not None:
        problems.check(dotted(*at, "counterstain_reference_od"), reference, COUNTERSTAIN_REFERENCE)
    if len(problems.lines) > n_before:
        return None
    return Assay(
        name=name,
        description=description,
        stains=stains,
        nuclear_stains=tuple(nuclear),
        markers=tuple(markers),
        phenotypes=phenotypes,
        stain_vectors=vectors,
        stain_tolerance_deg=tolerance,
        objects=str(objects),
        counterstain_reference_od=None if reference is None else float(reference),
    )


def _parse_analysis(
    section: Mapping[str, Any], problems: Problems, base: Path | None
) -> AnalysisConfig | None:
    """The ``[analysis]`` table, or ``None`` when it has problems (all recorded in ``problems``)."""
    n_before = len(problems.lines)
    problems.unknown_keys(("analysis",), section, ANALYSIS_SETTINGS)
    for key, value in section.items():
        setting = ANALYSIS_SETTINGS.get(key)
        if setting is None:
            continue
        if key == "stain_vectors" and isinstance(value, Mapping):
            problems.add(
                dotted("analysis", key),
                'is a table: here it is "estimate" or "preset"; OD vectors go under '
                "[assay.NAME.stain_vectors]",
            )
            continue
        problems.check(dotted("analysis", key), value, setting)
    if len(problems.lines) > n_before:
        return None
    values = dict(section)
    if isinstance(values.get("model"), str) and base is not None:
        # a relative model path is relative to the settings file
        values["model"] = str((base / values["model"]).resolve())
    try:
        return AnalysisConfig(**values)
    except ConfigError as exc:  # a check across settings (halo, model): still one line each
        for line in exc.problems:
            problems.note(f"[analysis] {line}")
        return None


def _parse_settings(
    raw: Mapping[str, Any], source: str, base: Path | None
) -> tuple[AnalysisConfig, dict[str, Assay]]:
    """Check a whole settings document; raise one :class:`ConfigError` listing every problem."""
    problems = Problems(source)
    for key in raw:
        if key in ANALYSIS_SETTINGS:
            problems.add(dotted(key), "is an [analysis] setting: move it under [analysis]")
        elif key in ASSAY_KEYS:
            problems.add(dotted(key), "is a key of an assay: move it under [assay.NAME]")
    others = {k: v for k, v in raw.items() if k not in ANALYSIS_SETTINGS and k not in ASSAY_KEYS}
    problems.unknown_keys((), others, SECTIONS, what="section")
    section = raw.get("analysis", {})
    analysis: AnalysisConfig | None = None
    if not isinstance(section, Mapping):
        problems.add_value(
            "analysis", section, "is not a table: write [analysis] on its own line, settings below"
        )
    else:
        analysis = _parse_analysis(section, problems, base)
    assays: dict[str, Assay] = {}
    tables = raw.get("assay", {})
    if not isinstance(tables, Mapping):
        problems.add_value("assay", tables, "is not a table: write [assay.NAME] for each assay")
        tables = {}
    for name, table in tables.items():
        assay = _parse_assay(str(name), table, problems)
        if assay is not None:
            assays[assay.name] = assay
    if problems.lines or analysis is None:
        raise ConfigError(*problems.lines)
    return analysis, assays


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document of a settings file; any reading problem is one :class:`ConfigError` line."""
    if path.exists() and not path.is_file():  # a folder or a pipe: never block on reading it
        raise ConfigError(f"{path}: is not a regular file: give a TOML settings file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text: save the settings file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: is not valid TOML: {exc}") from exc


def _preset_assays() -> dict[str, Assay]:
    text = resources.files("senpath").joinpath("presets/assays.toml").read_text(encoding="utf-8")
    return _parse_settings(tomllib.loads(text), "senpath/presets/assays.toml", None)[1]


@dataclass(frozen=True)
class Settings:
    """Everything a settings file defines, read and checked once.

    Attributes
    ----------
    analysis : the ``[analysis]`` settings (defaults for keys the file leaves out).
    assays : the shipped presets plus the file's ``[assay.NAME]`` assays (a file's assay replaces the
        preset of the same name).
    source : the file (or ``<settings mapping>``) the settings came from; ``None`` for defaults.
    """

    analysis: AnalysisConfig
    assays: Mapping[str, Assay]
    source: str | None = None


#: How a settings mapping (not a file) is named in messages.
MAPPING_SOURCE = "<settings mapping>"


def load_settings(source: str | Path | Mapping[str, Any] | None = None) -> Settings:
    """Read and check a settings file (or a mapping of the same shape): the one settings loader.

    The CLI (``--config``), the Python API (``config=`` of :func:`senpath.analyze_slide` and
    :func:`senpath.run_batch`) and the napari plugin all read settings here. Every key has a type
    and a range; unknown sections and keys are errors at every level.

    Parameters
    ----------
    source : a TOML file with ``[analysis]`` settings and ``[assay.NAME]`` assays; or a mapping of
        the same shape (``{"analysis": {"segmenter": "classical"}}``); ``None``: the defaults.

    Returns
    -------
    Settings

    Raises
    ------
    ConfigError
        Listing every problem, one line each: the file, the full dotted key
        (``assay.my-ki67.marker[0].threshold_od``) and what to write instead.
    """
    presets = _preset_assays()
    if source is None:
        return Settings(AnalysisConfig(), presets)
    if isinstance(source, Mapping):
        analysis, assays = _parse_settings(source, MAPPING_SOURCE, None)
        return Settings(analysis, {**presets, **assays}, MAPPING_SOURCE)
    path = Path(source)
    analysis, assays = _parse_settings(_read_toml(path), str(path), path.parent)
    return Settings(analysis, {**presets, **assays}, str(path))


def resolve_settings(
    config: AnalysisConfig | str | Path | Mapping[str, Any] | None,
    assays: Mapping[str, Assay] | None = None,
) -> tuple[AnalysisConfig, Mapping[str, Assay] | None]:
    """The analysis settings and assays for ``config=`` of the Python API.

    Parameters
    ----------
    config : an :class:`AnalysisConfig`, a settings TOML path, a settings mapping (see
        :func:`load_settings`) or ``None`` (the defaults).
    assays : assays given by the caller; they take precedence over a settings file's.

    Returns
    -------
    (analysis, assays)
        ``assays`` stays ``None`` when neither the caller nor a settings file gave any (the presets
        are then loaded where an assay is looked up).
    """
    if config is None:
        return AnalysisConfig(), assays
    if isinstance(config, AnalysisConfig):
        return config, assays
    if isinstance(config, (str, Path, Mapping)):
        settings = load_settings(config)
        return settings.analysis, {**settings.assays, **(assays or {})}
    raise TypeError(
        "config must be an AnalysisConfig, the path of a settings TOML file or a mapping of the "
        f"same shape; got {type(config).__name__}"
    )


def load_assays(extra: str | Path | None = None) -> dict[str, Assay]:
    """The shipped assay presets, then the assays of the settings file ``extra``.

    A user assay with a preset's name replaces it. The whole file is checked (see
    :func:`load_settings`, which reads both halves of a settings file at once).
    """
    return dict(load_settings(extra).assays)


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
    precision : how the CNN runs: ``auto`` (fp16 on CUDA; on a CPU the fastest of ``fp32``,
        ``bf16``, ``onnx-fp32`` and ``onnx-int8`` that keeps fp32's nuclei, measured once per
        machine), ``fp32``, ``bf16``, ``fp16`` (CUDA), ``onnx-fp32`` (ONNX Runtime, CPU) or
        ``onnx-int8`` (the model's int8 network in ONNX Runtime, CPU).
    tissue_mpp : resolution of the tissue mask.
    stain_vectors : ``estimate`` (per slide, Macenko with the assay's vectors as the prior and guard
        rails; see :func:`senpath.stain.estimate_stains`) or ``preset`` (the assay's vectors as given).
    normalise_counterstain : for an assay with a ``counterstain_reference_od``, the CNN sees a
        slide whose counterstain (the assay's first nuclear stain) is fainter than that level with
        that stain strengthened, so unstained nuclei are found as often as stained ones
        (:mod:`senpath.segment.counterstain`); stains are measured on the original pixels either
        way. False: never (as before it existed).
    test_time_flips : the CNN's maps averaged over each tile and its three flips (left-right,
        up-down, both): better outlines (about +0.01 F1 on held-out H&E and most stains), not
        more even detection, for 4x the network's work (on a CPU about 3x the segmentation's
        time). Off by default. CNN only.
    auto_threshold : when true, each marker's threshold is set per slide from its OD distribution
        (Otsu, bounded to ``auto_threshold_bounds_od``); off by default: fixed thresholds compare slides.
    auto_threshold_bounds_od : (low, high) OD bounds of an automatic threshold.
    control_percentile : a batch with a negative control (sample sheet ``control = negative``)
        scores each marker at this percentile of the control's per-cell marker OD (default 99: about
        1 % of truly negative cells are called positive, the false-positive rate labs accept when
        gating on a negative control; 95 lets 5 % through, too many for markers that are rare).
    control_min_cells : fewest cells a negative control must have for its cut-off (default 200:
        the 99th percentile then rests on the two darkest cells, below that it is one cell's OD).
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
    precision: str = "auto"
    tissue_mpp: float = 8.0
    stain_vectors: str = "estimate"
    normalise_counterstain: bool = True
    test_time_flips: bool = False
    auto_threshold: bool = False
    auto_threshold_bounds_od: tuple[float, float] = (0.08, 0.5)
    control_percentile: float = 99.0
    control_min_cells: int = 200

    def __post_init__(self) -> None:
        problems = _field_problems(self)
        if problems:
            raise ConfigError(*problems)
        if self.model is not None and self.segmenter == "classical":
            raise ConfigError("model is for the CNN segmenter: drop it or use segmenter 'cnn'")
        if self.test_time_flips and self.segmenter == "classical":
            raise ConfigError(
                "test_time_flips is for the CNN segmenter: drop it or use segmenter 'cnn'"
            )
        lo, hi = (float(x) for x in self.auto_threshold_bounds_od)
        if not 0 <= lo < hi:
            raise ConfigError(
                "auto_threshold_bounds_od must be two OD values, low < high, e.g. [0.08, 0.5]"
            )
        object.__setattr__(self, "auto_threshold_bounds_od", (lo, hi))
        if float(self.control_min_cells) != int(self.control_min_cells):
            raise ConfigError(
                f"`control_min_cells` = {self.control_min_cells!r} is not a whole number of "
                "cells, e.g. 200"
            )
        object.__setattr__(self, "control_min_cells", int(self.control_min_cells))
        object.__setattr__(self, "control_percentile", float(self.control_percentile))
        if self.halo_um < min_halo_um(self.max_nucleus_area_um2):
            raise ConfigError(
                f"halo_um ({self.halo_um:g} µm) must be at least the largest nucleus diameter, "
                f"{min_halo_um(self.max_nucleus_area_um2):.1f} µm for max_nucleus_area_um2 = "
                f"{self.max_nucleus_area_um2:g} µm²: raise halo_um or lower max_nucleus_area_um2"
            )

    def replace(self, **changes: Any) -> AnalysisConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_segmenter(self, method: str) -> AnalysisConfig:
        """A copy with ``segmenter`` resolved to ``method`` (``auto`` turned into ``cnn`` or
        ``classical``); the CNN-only ``test_time_flips`` is dropped when that is ``classical``."""
        return self.replace(
            segmenter=method, test_time_flips=self.test_time_flips and method == "cnn"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the settings (part of a result's identity for resume).

        The control settings (:data:`CONTROL_SETTINGS`) are left out: they change only slides scored
        from a control, whose identity holds the cut-offs they gave.
        """
        settings = {k: v for k, v in self.to_dict().items() if k not in CONTROL_SETTINGS}
        if settings["precision"] == "auto":
            del settings[
                "precision"
            ]  # the default leaves the digests of earlier stores as they were
        if settings["normalise_counterstain"]:  # as above; what it does is the assay's reference
            del settings["normalise_counterstain"]
        if not settings["test_time_flips"]:  # off, the default: earlier stores keep their digest
            del settings["test_time_flips"]
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _field_problems(config: AnalysisConfig) -> list[str]:
    """Type and range problems of each setting of ``config`` (see :data:`ANALYSIS_SETTINGS`)."""
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "model" and value is None:
            continue
        problem = ANALYSIS_SETTINGS[f.name].check(value)
        if problem is not None:
            problems.append(f"`{f.name}` = {shown(value)} {problem}")
    if not problems and config.min_nucleus_area_um2 >= config.max_nucleus_area_um2:
        problems.append(
            f"`min_nucleus_area_um2` = {config.min_nucleus_area_um2:g} is not below "
            f"`max_nucleus_area_um2` = {config.max_nucleus_area_um2:g}: lower the first or raise "
            "the second"
        )
    return problems


def load_config(path: str | Path | Mapping[str, Any] | None = None) -> AnalysisConfig:
    """The ``[analysis]`` settings of a settings file (missing keys keep their defaults).

    The whole file is checked (see :func:`load_settings`, which reads both halves at once).
    """
    return load_settings(path).analysis


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
        *([f"objects = {_toml_value(assay.objects)}"] if assay.objects != "nuclei" else []),
        *(
            [f"counterstain_reference_od = {_toml_value(assay.counterstain_reference_od)}"]
            if assay.counterstain_reference_od is not None
            else []
        ),
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
            *(["labelling_index = true"] if rule.labelling_index else []),
            "",
        ]
    return "\n".join(lines)
