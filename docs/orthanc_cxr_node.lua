-- Orthanc routing rule for cxr-node: every digital X-ray (DX) or computed radiography
-- (CR) film stored in Orthanc is sent on to the node, registered in Orthanc's
-- configuration as the modality "cxr":
--   "DicomModalities" : { "cxr" : [ "CXR_EDGE", "10.0.0.7", 11112 ] }
-- The node's reports (SR) and overlays (OT, secondary capture) are not DX or CR, so
-- they are never routed back to it. Load it with "LuaScripts" : [ "orthanc_cxr_node.lua" ].
-- tests/node_orthanc_test.py runs this very file.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality == 'DX' or modality == 'CR' then
    SendToModality(instanceId, 'cxr')
  end
end
