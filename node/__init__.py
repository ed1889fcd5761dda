"""cxr-edge's clinic node: the edge predictor on the DICOM network. TensorFlow-free.

`cxr_edge.node.node` (cxr-node) receives films over DICOM (pynetdicom), queues them in a
crash-safe spool (`spool`), predicts each with the edge runtime, writes a Structured
Report (`report`, highdicom), forwards it to the PACS (`dicom`) and shows a review page
(`review`). Imports core and edge only; the DICOM network libraries come with the
`cxr-edge[node]` extra.
"""
