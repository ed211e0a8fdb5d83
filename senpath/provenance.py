"""What produced a slide's results: the typed ``provenance.json`` of a store, read in one place.

:class:`Provenance` is what every reader of a store uses (export, report, GeoJSON, corrections, the
napari plugin); no other module looks up provenance keys. :meth:`Provenance.from_dict` is tolerant of
the stores already on disk: a key an older store lacks takes its documented default, and keys this
version does not know are kept (``extra``) so :meth:`Provenance.to_dict` gives back what was read.

Layout of ``provenance.json`` (written by the pipeline, see :func:`marker_record`)::

    senpath_version   package version
    slide             path, backend, vendor, mpp [x, y] (µm/px), mpp_source, shape [Y, X]; when an
                      explicit mpp replaced the file's calibration also file_mpp [x, y],
                      file_mpp_source and, if the two disagree by more than 5 %, mpp_warning
    assay             name, stains, stain_vectors (one (R, G, B) OD vector per stain), stain_vectors_source,
                      preset_stain_vectors, stain_tolerance_deg, phenotypes, markers (one record each:
                      the rule plus threshold_od, the OD it was scored with, and rule_threshold_od)
    background_i0     glass intensity per RGB channel the optical densities were computed with
    config            the analysis settings (µm): analysis_mpp, cytoplasm_um, halo_um, ...
    segmenter         method (cnn / classical), model identity (model_sha256, ...)
    stain_estimate, thresholds, device, timings     descriptive records
    corrections       only as loaded with corrections: the log and its number of entries
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from senpath.config import Assay, MarkerRule, get_assay, load_assays, stain_profile_toml
from senpath.stain import DEFAULT_I0

#: Settings an older store may lack, with the value the pipeline used then (µm).
DEFAULT_CYTOPLASM_UM = 5.0
DEFAULT_HALO_UM = 24.0


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@functools.cache
def _preset_labelling_markers() -> frozenset[str]:
    """Markers the shipped presets define as a proliferation labelling index (Ki67)."""
    return frozenset(
        rule.name
        for assay in load_assays().values()
        for rule in assay.markers
        if rule.labelling_index
    )


def _known_labelling_index(marker: str) -> bool:
    """Whether the shipped presets define marker ``marker`` as a labelling index (for provenance
    records without the flag, which is all of them: see :func:`marker_record`)."""
    return marker in _preset_labelling_markers()


@dataclass(frozen=True)
class MarkerRecord:
    """One marker as a slide was scored: its rule and the threshold used.

    Attributes
    ----------
    rule : the marker rule (``rule.threshold_od`` is the assay's or profile's own threshold).
    threshold_od : the OD threshold the slide was scored with (automatic, the rule's, or, as loaded
        with corrections, the one in effect).
    pipeline_threshold_od : as loaded with corrections and a changed threshold: the pipeline's.
    extra : keys this version does not know (kept for :meth:`to_dict`).
    """

    rule: MarkerRule
    threshold_od: float
    pipeline_threshold_od: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.rule.name

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MarkerRecord:
        known = {"name", "stain", "compartment", "statistic", "bins_od", "threshold_od"}
        known |= {"rule_threshold_od", "pipeline_threshold_od", "labelling_index"}
        name = str(raw["name"])
        labelling = raw.get("labelling_index")
        rule = MarkerRule(
            name=name,
            stain=str(raw["stain"]),
            compartment=str(raw["compartment"]),
            threshold_od=float(raw.get("rule_threshold_od", raw["threshold_od"])),
            bins_od=_floats(raw["bins_od"]),  # type: ignore[arg-type]
            statistic=str(raw.get("statistic", "mean")),
            labelling_index=(
                _known_labelling_index(name) if labelling is None else bool(labelling)
            ),
        )
        pipeline = raw.get("pipeline_threshold_od")
        return cls(
            rule=rule,
            threshold_od=float(raw["threshold_od"]),
            pipeline_threshold_od=None if pipeline is None else float(pipeline),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {**marker_record(self.rule, self.threshold_od), **copy.deepcopy(dict(self.extra))}
        if self.pipeline_threshold_od is not None:
            out["pipeline_threshold_od"] = self.pipeline_threshold_od
        return out


def marker_record(rule: MarkerRule, threshold_od: float) -> dict[str, Any]:
    """The provenance record of a marker scored at ``threshold_od`` (what ``provenance.json`` holds).

    ``labelling_index`` is not written: stores keep the layout they have had, and readers take it
    from the shipped preset marker of the same name (:meth:`MarkerRecord.from_dict`).
    """
    return {
        "name": rule.name,
        "stain": rule.stain,
        "compartment": rule.compartment,
        "threshold_od": threshold_od,
        "bins_od": list(rule.bins_od),
        "statistic": rule.statistic,
        "rule_threshold_od": rule.threshold_od,
    }


@dataclass(frozen=True)
class AssayRecord:
    """The assay a slide was measured and scored with, as recorded."""

    name: str
    stains: tuple[str, ...]
    stain_vectors: tuple[tuple[float, ...], ...]
    markers: tuple[MarkerRecord, ...] = ()
    phenotypes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stain_tolerance_deg: Mapping[str, float] = field(default_factory=dict)
    stain_vectors_source: str = "preset"
    preset_stain_vectors: tuple[tuple[float, ...], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AssayRecord:
        known = {"name", "stains", "stain_vectors", "markers", "phenotypes"}
        known |= {"stain_tolerance_deg", "stain_vectors_source", "preset_stain_vectors"}
        preset = raw.get("preset_stain_vectors")
        return cls(
            name=str(raw["name"]),
            stains=tuple(str(s) for s in raw["stains"]),
            stain_vectors=tuple(_floats(v) for v in raw.get("stain_vectors", [])),
            markers=tuple(MarkerRecord.from_dict(m) for m in raw.get("markers", [])),
            phenotypes={str(k): tuple(v) for k, v in raw.get("phenotypes", {}).items()},
            stain_tolerance_deg={
                str(s): float(d) for s, d in raw.get("stain_tolerance_deg", {}).items()
            },
            stain_vectors_source=str(raw.get("stain_vectors_source", "preset")),
            preset_stain_vectors=None if preset is None else tuple(_floats(v) for v in preset),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "stains": list(self.stains),
            "stain_vectors": [list(v) for v in self.stain_vectors],
            "stain_vectors_source": self.stain_vectors_source,
            "stain_tolerance_deg": dict(self.stain_tolerance_deg),
            "markers": [m.to_dict() for m in self.markers],
            "phenotypes": {k: list(v) for k, v in self.phenotypes.items()},
        }
        if self.preset_stain_vectors is not None:
            out["preset_stain_vectors"] = [list(v) for v in self.preset_stain_vectors]
        return {**out, **copy.deepcopy(dict(self.extra))}

    def assay(self) -> Assay:
        """The :class:`~senpath.config.Assay` rebuilt from the record.

        Marker rules keep their own thresholds (the ones used are :attr:`Provenance.thresholds`); a
        shipped preset of the same name supplies the nuclear stains and description.
        """
        try:
            preset = get_assay(self.name)
            nuclear, description = preset.nuclear_stains, preset.description
        except ValueError:
            nuclear, description = self.stains[:1], ""
        return Assay(
            name=self.name,
            description=description,
            stains=self.stains,
            nuclear_stains=nuclear,
            markers=tuple(m.rule for m in self.markers),
            phenotypes=dict(self.phenotypes),
            stain_vectors={
                s: (v[0], v[1], v[2]) for s, v in zip(self.stains, self.stain_vectors, strict=False)
            },
            stain_tolerance_deg=dict(self.stain_tolerance_deg),
        )


@dataclass(frozen=True)
class Provenance:
    """A store's ``provenance.json``, typed.

    Attributes
    ----------
    senpath_version : the package version that wrote the store.
    slide : the slide record (``path``, ``mpp`` [x, y] µm/px, ``backend``, ``shape``, ...).
    assay : the assay as measured and scored.
    background_i0 : glass intensity per RGB channel (default :data:`senpath.stain.DEFAULT_I0`).
    config : the analysis settings (see :class:`senpath.config.AnalysisConfig`).
    segmenter : ``method`` and the model identity.
    corrections : as loaded with corrections: ``{"log", "n_entries"}``; ``None`` otherwise.
    corrections_set_aside : the file a re-analysis moved an earlier corrections log to, if any.
    records : the descriptive records (``stain_estimate``, ``thresholds``, ``device``, ``timings``)
        and keys this version does not know, as stored.
    """

    senpath_version: str
    slide: Mapping[str, Any]
    assay: AssayRecord
    background_i0: tuple[float, ...] = (DEFAULT_I0,)
    config: Mapping[str, Any] = field(default_factory=dict)
    segmenter: Mapping[str, Any] = field(default_factory=dict)
    corrections: Mapping[str, Any] | None = None
    corrections_set_aside: str | None = None
    records: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = ("senpath_version", "slide", "assay", "background_i0", "config", "segmenter")
    _OPTIONAL = ("corrections", "corrections_set_aside")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Provenance:
        """Read a ``provenance.json`` object (tolerant of the keys older stores lack)."""
        i0 = raw.get("background_i0")
        if i0 is None:
            background: tuple[float, ...] = (DEFAULT_I0,)
        elif isinstance(i0, int | float):
            background = (float(i0),)
        else:
            background = _floats(i0)
        known = set(cls._FIELDS) | set(cls._OPTIONAL)
        return cls(
            senpath_version=str(raw.get("senpath_version", "")),
            slide=copy.deepcopy(dict(raw.get("slide", {}))),
            assay=AssayRecord.from_dict(raw["assay"]),
            background_i0=background,
            config=copy.deepcopy(dict(raw.get("config", {}))),
            segmenter=copy.deepcopy(dict(raw.get("segmenter", {}))),
            corrections=copy.deepcopy(raw.get("corrections")),
            corrections_set_aside=raw.get("corrections_set_aside"),
            records={k: copy.deepcopy(v) for k, v in raw.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready object (what :meth:`from_dict` read, for a store of this version)."""
        out: dict[str, Any] = {
            "senpath_version": self.senpath_version,
            "slide": copy.deepcopy(dict(self.slide)),
            "assay": self.assay.to_dict(),
            "background_i0": list(self.background_i0),
            "config": copy.deepcopy(dict(self.config)),
            "segmenter": copy.deepcopy(dict(self.segmenter)),
        }
        if self.corrections is not None:
            out["corrections"] = copy.deepcopy(dict(self.corrections))
        if self.corrections_set_aside is not None:
            out["corrections_set_aside"] = self.corrections_set_aside
        return {**out, **copy.deepcopy(dict(self.records))}

    # ------------------------------------------------------------------------ what readers need

    @property
    def markers(self) -> tuple[MarkerRecord, ...]:
        return self.assay.markers

    @property
    def thresholds(self) -> dict[str, float]:
        """``{marker: threshold_od}`` the slide was scored with."""
        return {m.name: m.threshold_od for m in self.assay.markers}

    @property
    def threshold_records(self) -> dict[str, dict[str, Any]]:
        """``{marker: record}`` of where each threshold came from: ``source`` is ``rule``, ``auto``
        or ``control`` (then ``control_slide_id``, ``batch``, ``control_percentile`` and
        ``control_n_cells`` say which negative control set it); ``{}`` for a store without them."""
        raw = self.records.get("thresholds") or {}
        return {str(m): dict(v) for m, v in raw.items()}

    def threshold_source(self, marker: str) -> str:
        """Where ``marker``'s threshold came from: ``rule``, ``auto``, ``control`` (as scored) or
        ``corrected`` (as loaded with corrections that changed it)."""
        for m in self.assay.markers:
            if m.name == marker and m.pipeline_threshold_od is not None:
                return "corrected"
        return str(self.threshold_records.get(marker, {}).get("source", "rule"))

    @property
    def slide_path(self) -> str:
        """Where the slide was when it was analysed."""
        return str(self.slide["path"])

    @property
    def slide_mpp(self) -> tuple[float, float]:
        """Level-0 (x, y) µm/px of the slide."""
        mpp = self.slide["mpp"]
        return (float(mpp[0]), float(mpp[1]))

    @property
    def file_mpp(self) -> tuple[float, float] | None:
        """The file's own level-0 (x, y) µm/px when an explicit mpp was used instead of it.

        None when the slide was analysed at its file's calibration, the file had none, or the
        store predates this record.
        """
        mpp = self.slide.get("file_mpp")
        return None if mpp is None else (float(mpp[0]), float(mpp[1]))

    @property
    def mpp_warning(self) -> str | None:
        """The line saying the explicit mpp contradicted the file's calibration, if it did."""
        warning = self.slide.get("mpp_warning")
        return None if warning is None else str(warning)

    @property
    def cytoplasm_um(self) -> float:
        """Width of the cytoplasm ring the cells were measured with (µm)."""
        return float(self.config.get("cytoplasm_um", DEFAULT_CYTOPLASM_UM))

    @property
    def halo_um(self) -> float:
        """Tile halo of the analysis (µm): at least the largest nucleus diameter."""
        return float(self.config.get("halo_um", DEFAULT_HALO_UM))

    @property
    def segmenter_method(self) -> str | None:
        method = self.segmenter.get("method")
        return None if method is None else str(method)

    @property
    def model_sha256(self) -> str | None:
        sha = self.segmenter.get("model_sha256")
        return None if sha is None else str(sha)

    def with_thresholds(
        self, thresholds: Mapping[str, float], *, corrections: Mapping[str, Any]
    ) -> Provenance:
        """As loaded with corrections: markers' ``threshold_od`` are the ones in effect (a changed
        one keeps the pipeline's as ``pipeline_threshold_od``) and ``corrections`` names the log."""
        markers = []
        for m in self.assay.markers:
            new = thresholds.get(m.name)
            if new is not None and float(new) != m.threshold_od:
                m = dataclasses.replace(
                    m, threshold_od=float(new), pipeline_threshold_od=m.threshold_od
                )
            markers.append(m)
        assay = dataclasses.replace(self.assay, markers=tuple(markers))
        return dataclasses.replace(self, assay=assay, corrections=dict(corrections))


def profile_toml(
    provenance: Provenance, thresholds: Mapping[str, float], *, name: str | None = None
) -> str:
    """A lab stain profile (TOML for ``senpath run --config``) from a slide's provenance.

    The slide's assay with the stain vectors it was measured with and the given thresholds; see
    :func:`senpath.config.stain_profile_toml`, the one writer of profile TOML.
    """
    return stain_profile_toml(provenance.assay.assay(), thresholds=thresholds, name=name)
