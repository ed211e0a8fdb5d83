"""Regenerate the bundled synthetic sample slides and the sample sheet (deterministic).

    python sample_images/make_samples.py

Two synthetic patients, each with three sections: P01 (few senescent cells) and P02 (therapy-induced
senescence: many enlarged, p16+/SA-beta-gal+, Ki67- cells). The same seed gives the same cells on a
patient's sections, like serial sections stained differently. A third patient, P03, is the real
Aperio H&E slide CMU-1-Small-Region.svs (OpenSlide test data, CC0), copied here by hand.
"""

from __future__ import annotations

from pathlib import Path

from senpath.synth import SynthParams, write_slide

HERE = Path(__file__).resolve().parent
SHAPE = (1536, 1536)  # px at 0.5 µm/px: 768 µm square
PATIENTS = {
    "P01": (11, 0.05, ("ki67", "p16", "sabgal")),
    "P02": (12, 0.35, ("sabgal+ki67", "p16+ki67", "sabgal-eosin")),
}


def main() -> None:
    rows = ["patient_id,slide_id,path,assay"]
    for patient, (seed, senescent, assays) in PATIENTS.items():
        params = SynthParams(tissue_fraction=0.8, senescent_fraction=senescent)
        for assay in assays:
            slide_id = f"{patient}-{assay.replace('+', '_')}"
            s = write_slide(
                HERE / f"{slide_id}.tif", assay=assay, shape=SHAPE, mpp=0.5, seed=seed,
                params=params, write_labels=False,
            )  # fmt: skip
            rows.append(f"{patient},{slide_id},{s.path.name},{assay}")
            print("wrote", s.path.name, s.truth_path.name)
    if (HERE / "CMU-1-Small-Region.svs").exists():
        rows.append("P03,P03-he,CMU-1-Small-Region.svs,he")
    (HERE / "samples.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
