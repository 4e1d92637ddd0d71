-- Argo CD health of a kubeforge.io/TrainingJob, the same verdict as Flux's kstatus
-- (sigs.k8s.io/cli-utils pkg/kstatus/status, v0.37.2: Current -> Healthy, InProgress -> Progressing,
-- Failed -> Degraded), plus Argo CD's Suspended:
--   no status, or status.observedGeneration ~= metadata.generation -> Progressing (the operator has
--   not seen the latest spec yet); then the first condition in the list that is Reconciling=True
--   (-> Progressing: Pending, also while Kueue has not admitted it; Running; Restarting) or
--   Stalled=True (-> Degraded, with its message: Failed, a child conflict, a permanent API error);
--   phase Suspended (spec.runPolicy.suspend) -> Suspended (kstatus: InProgress, as Ready is False);
--   Ready=True (Succeeded) -> Healthy; anything else -> Progressing.
-- Status written by operators before the Reconciling/Stalled conditions (neither present): each phase
-- has a condition of the same name, and either the phase or a True condition counts: Succeeded ->
-- Healthy; Failed -> Degraded; Suspended -> Suspended; anything else -> Progressing.
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
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local phase = status.phase or "Pending"

local function is(name)
  local c = condition(conditions, name)
  return status.phase == name or (c ~= nil and c.status == "True"), c
end

if condition(conditions, "Reconciling") ~= nil or condition(conditions, "Stalled") ~= nil then
  -- kstatus takes the first abnormal condition in the list
  for _, c in ipairs(conditions) do
    if c.status == "True" and c.type == "Reconciling" then
      hs.status = "Progressing"
      hs.message = describe(c, "The TrainingJob is " .. phase)
      return hs
    end
    if c.status == "True" and c.type == "Stalled" then
      hs.status = "Degraded"
      hs.message = describe(c, "The TrainingJob cannot progress without a change")
      return hs
    end
  end
  local suspended, suspendedCondition = is("Suspended")
  if suspended then
    hs.status = "Suspended"
    hs.message = describe(suspendedCondition, "The TrainingJob is suspended")
    return hs
  end
  local ready = condition(conditions, "Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = describe(ready, "The training succeeded")
    return hs
  end
  hs.status = "Progressing"
  hs.message = describe(ready, "The TrainingJob is " .. phase)
  return hs
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
  hs.message = describe(failedCondition, describe(condition(conditions, "Degraded"), "The training failed"))
  return hs
end
local suspended, suspendedCondition = is("Suspended")
if suspended then
  hs.status = "Suspended"
  hs.message = describe(suspendedCondition, "The TrainingJob is suspended")
  return hs
end
hs.status = "Progressing"
hs.message = describe(condition(conditions, phase), "The TrainingJob is " .. phase)
return hs
