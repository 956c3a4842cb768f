"""PACS family: DICOMweb query (QIDO-RS), pull (WADO-RS) and push (STOW-RS) with dicomweb-client."""
