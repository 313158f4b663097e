"""Templates → e-paper bitmaps: layout, drawing, colour reduction, packing, compression.

Never imports `eslserver`; uses the label-model registry from `firmware_proto`.
"""
