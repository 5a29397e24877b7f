-- Argo CD resource actions for modelloop.dev/RetrainPolicy. Each one sets what the operator
-- already honours: the modelloop.dev/retrain-now and modelloop.dev/rollback-to annotations, and
-- spec.suspend. The operator acts on an annotation value once (it records it in status.handled).
local actions = {}
local spec = obj.spec or {}
local status = obj.status or {}
local suspended = spec.suspend == true
-- A training asked for while suspended would start at resume, long after the click.
actions["retrain-now"] = {["disabled"] = suspended, ["displayName"] = "Retrain now"}
-- The operator takes a rollback request only between rollouts, and needs a version to return to.
local rolling = status.desired ~= nil and status.desired.version ~= status.activeVersion
local rollback = {["disabled"] = status.previousVersion == nil or rolling}
if status.previousVersion ~= nil then
  rollback["displayName"] = "Roll back to " .. status.previousVersion
else
  rollback["displayName"] = "Roll back"
end
actions["rollback"] = rollback
actions["suspend"] = {["disabled"] = suspended, ["displayName"] = "Suspend retraining"}
actions["resume"] = {["disabled"] = not suspended, ["displayName"] = "Resume retraining"}
return actions
