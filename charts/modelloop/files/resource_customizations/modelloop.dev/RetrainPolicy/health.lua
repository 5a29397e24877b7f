-- Argo CD health check for modelloop.dev/RetrainPolicy.
-- A policy is Healthy when its active version is fully rolled out, Progressing while the
-- operator has not reported yet, a version is training or a rollout is under way, Degraded when
-- the rollout stalled, every retry of a training was used up (RetriesExhausted), the operator reports Ready=False for a reason other than "no version yet",
-- the bucket is unreadable (FeedbackReadable=False), or no version serves and none is training
-- (the first version failed or was rejected: nothing will happen until someone acts), Suspended
-- when spec.suspend is set (running trainings still finish).
local hs = {}
local function condition(status, ctype)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then return c end
  end
  return nil
end

local status = obj.status
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no new trainings start"
  return hs
end
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the policy"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local stalled = condition(status, "RolloutComplete")
if stalled ~= nil and stalled.status == "False" and stalled.reason == "RolloutStalled" then
  hs.status = "Degraded"
  hs.message = stalled.message or "Rollout stalled"
  return hs
end
local exhausted = condition(status, "RetriesExhausted")
if exhausted ~= nil and exhausted.status == "True" then
  hs.status = "Degraded"
  hs.message = "Retries exhausted: " .. (exhausted.message or "every training attempt failed or was rejected") ..
    "; fix the cause, then retrain now"
  return hs
end
local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason ~= "NoActiveVersion" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason or "Not ready"
  return hs
end
local storage = condition(status, "FeedbackReadable")
if storage ~= nil and storage.status == "False" then
  hs.status = "Degraded"
  hs.message = "Storage unreadable: " .. (storage.message or storage.reason or "FeedbackReadable is False")
  return hs
end
local rollout = status.rollout
if status.desired ~= nil and rollout ~= nil and (rollout.total or 0) > 0 and (rollout.updated or 0) < rollout.total then
  hs.status = "Progressing"
  hs.message = "Rolling out " .. status.desired.version .. ": " .. (rollout.updated or 0) .. "/" .. rollout.total .. " replicas"
  return hs
end
if status.activeVersion == nil then
  hs.status = "Progressing"
  if status.trainingVersion ~= nil then
    hs.message = "Training the first version " .. status.trainingVersion
  elseif status.desired ~= nil then
    hs.message = "Promoting the first version " .. status.desired.version .. ": waiting for serving replicas"
  elseif status.latestVersion ~= nil and status.desired == nil and status.candidate == nil then
    hs.status = "Degraded"
    hs.message = "No version serves and none is training: " .. status.latestVersion ..
      " failed or was rejected (kubectl describe mv " .. obj.metadata.name .. "-" .. status.latestVersion ..
      "); fix the cause, then retrain now"
  else
    hs.message = "No active version yet"
  end
  return hs
end
hs.status = "Healthy"
hs.message = "Serving " .. status.activeVersion
if status.trainingVersion ~= nil then
  hs.message = hs.message .. "; training " .. status.trainingVersion
end
return hs
