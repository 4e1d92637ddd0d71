-- Argo CD health of a kubeforge.io/TrainingJob, after kstatus
-- (https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus):
--   no status, or status.observedGeneration < metadata.generation -> Progressing (the operator has not
--   seen the latest spec yet); Succeeded -> Healthy; Failed -> Degraded; Suspended (spec.runPolicy.suspend)
--   -> Suspended; anything else (Pending, also while Kueue has not admitted it; Running; Restarting)
--   -> Progressing.
-- Each phase has a condition of the same name; either the phase or a True condition counts.
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to observe generation " .. tostring(generation)
  return hs
end

local function is(phase)
  local c = condition(status.conditions, phase)
  return status.phase == phase or (c ~= nil and c.status == "True"), c
end

local succeeded, succeededCondition = is("Succeeded")
if succeeded then
  hs.status = "Healthy"
  hs.message = describe(succeededCondition, "The training succeeded")
  return hs
end
local failed, failedCondition = is("Failed")
if failed then
  hs.status = "Degraded"
  hs.message = describe(failedCondition, describe(condition(status.conditions, "Degraded"), "The training failed"))
  return hs
end
local suspended, suspendedCondition = is("Suspended")
if suspended then
  hs.status = "Suspended"
  hs.message = describe(suspendedCondition, "The TrainingJob is suspended")
  return hs
end
hs.status = "Progressing"
local phase = status.phase or "Pending"
hs.message = describe(condition(status.conditions, phase), "The TrainingJob is " .. phase)
return hs
