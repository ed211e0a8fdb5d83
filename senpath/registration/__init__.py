"""Serial sections: register a patient's adjacent sections and map markers across them.

Adjacent sections stained for different markers are registered onto a reference section from
low-resolution, stain-independent pictures (total optical density at ~8 µm/px) with SimpleITK
(rigid then affine, Mattes mutual information), checked by an independent method (scikit-image
phase correlation + OpenCV ECC), and graded per grid cell; cells are mapped into the reference
frame and a marker rule (e.g. SA-β-gal-high and Ki67-low) is evaluated per grid cell, unsure where
the registration is. ``senpath register RESULTS`` runs it per patient.
"""

from __future__ import annotations

from senpath.registration._colocalisation import (
    DEFAULT_RULE,
    MarkerCondition,
    bin_cells,
    cells_to_reference,
    colocalisation_map,
    parse_rule,
)
from senpath.registration._image import SectionImage, section_image, section_image_from_rgb
from senpath.registration._methods import (
    RegistrationError,
    apply_affine,
    register_phase_ecc,
    register_simpleitk,
)
from senpath.registration._quality import QualityGrid, SectionRegistration, register_sections
from senpath.registration._store import (
    PatientSections,
    SectionsError,
    patients_with_sections,
    read_patient_sections,
    register_patient,
    sections_folder,
)

__all__ = [
    "DEFAULT_RULE",
    "MarkerCondition",
    "PatientSections",
    "QualityGrid",
    "RegistrationError",
    "SectionImage",
    "SectionRegistration",
    "SectionsError",
    "apply_affine",
    "bin_cells",
    "cells_to_reference",
    "colocalisation_map",
    "parse_rule",
    "patients_with_sections",
    "read_patient_sections",
    "register_patient",
    "register_phase_ecc",
    "register_sections",
    "register_simpleitk",
    "section_image",
    "section_image_from_rgb",
    "sections_folder",
]
