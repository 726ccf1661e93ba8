"""Archives and their inputs: image decoding, DICOM, labels CSV, phantoms, the sketch synthesis S, canonical sketches.

May import: `s2m_retrieval.errors` only (and numpy, PIL, pydicom).
"""
