-- Argo CD health check for modelloop.dev/ModelVersion.
-- Rejected is Healthy: verification gates working as designed is not a fault of the version
-- object, and marking it Degraded would turn the whole Application red each time a candidate
-- loses to the active model. Failed (training or verification could not complete) is
-- Degraded. Superseded and RolledBack versions are history, so Healthy.
local hs = {}
local status = obj.status
local phase = nil
if status ~= nil then phase = status.phase end
if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
local message = status.message
if message == nil or message == "" then message = phase end
if phase == "Pending" or phase == "Training" or phase == "Verifying" or phase == "Verified" or phase == "Promoting" then
  hs.status = "Progressing"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Active" or phase == "Superseded" or phase == "RolledBack" or phase == "Rejected" then
  hs.status = "Healthy"
else
  hs.status = "Unknown"
  message = "Unknown phase " .. phase
end
hs.message = message
return hs
