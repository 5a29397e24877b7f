-- Serve status.previousVersion again, through the modelloop.dev/rollback-to annotation. The
-- operator acts on a value once (status.handled.rollbackTo), so the action names the version;
-- when that very value was the last one handled it asks for "previous" instead, which resolves
-- to the same version and is a new request.
local status = obj.status or {}
local target = status.previousVersion
if target == nil then
  error("no previous version to roll back to: status.previousVersion is empty")
end
local handled = nil
if status.handled ~= nil then
  handled = status.handled.rollbackTo
end
local request = target
if request == handled then
  request = "previous"
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["modelloop.dev/rollback-to"] = request
return obj
