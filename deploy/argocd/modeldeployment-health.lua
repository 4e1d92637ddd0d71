-- Argo CD health of a kubeforge.io/ModelDeployment, the same verdict as Flux's kstatus
-- (sigs.k8s.io/cli-utils pkg/kstatus/status, v0.37.2: Current -> Healthy, InProgress -> Progressing,
-- Failed -> Degraded):
--   no status, or status.observedGeneration ~= metadata.generation -> Progressing (the operator has
--   not seen the latest spec yet); then the first condition in the list that is Reconciling=True
--   (-> Progressing) or Stalled=True (-> Degraded, with its message); Ready=True -> Healthy;
--   anything else -> Progressing.
-- Status written by operators before the Reconciling/Stalled conditions (neither present): Degraded=True
-- or phase Failed -> Degraded; Ready=True -> Healthy; anything else -> Progressing.
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
local ready = condition(conditions, "Ready")
if condition(conditions, "Reconciling") ~= nil or condition(conditions, "Stalled") ~= nil then
  -- kstatus takes the first abnormal condition in the list
  for _, c in ipairs(conditions) do
    if c.status == "True" and c.type == "Reconciling" then
      hs.status = "Progressing"
      hs.message = describe(c, "The operator is reconciling the ModelDeployment")
      return hs
    end
    if c.status == "True" and c.type == "Stalled" then
      hs.status = "Degraded"
      hs.message = describe(c, "The ModelDeployment cannot progress without a change")
      return hs
    end
  end
else
  local degraded = condition(conditions, "Degraded")
  if (degraded ~= nil and degraded.status == "True") or status.phase == "Failed" then
    hs.status = "Degraded"
    hs.message = describe(degraded, describe(ready, "The ModelDeployment failed"))
    return hs
  end
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Triton servers to become ready")
return hs
