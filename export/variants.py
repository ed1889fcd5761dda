"""The TFLite variants cxr-export writes, and its report's name.

TensorFlow-free: cxr-export's flags list the variants before TensorFlow loads.
"""
VARIANTS = ("float32", "float16", "dynamic_range", "int8", "qat_int8")
# Converted from the float model; qat_int8 is converted from a cxr-train --qat run.
POST_TRAINING_VARIANTS = VARIANTS[:-1]
REPORT_NAME = "export_report.json"
