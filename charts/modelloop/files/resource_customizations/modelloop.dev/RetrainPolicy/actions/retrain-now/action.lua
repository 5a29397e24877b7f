-- Start a training now: a new value of the modelloop.dev/retrain-now annotation (the time, UTC).
-- While a version is in flight the request waits for it; it is acted on once.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["modelloop.dev/retrain-now"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
