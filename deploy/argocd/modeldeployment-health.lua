-- Argo CD health of a kubeforge.io/ModelDeployment, after kstatus
-- (https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus):
--   no status, or status.observedGeneration < metadata.generation -> Progressing (the operator has not
--   seen the latest spec yet); Degraded=True (or phase Failed) -> Degraded; Ready=True -> Healthy;
--   anything else -> Progressing.
-- Degraded is checked before Ready, as the operator's phase does: a server stuck on one pod makes the
-- whole ModelDeployment Degraded even while other replicas serve.
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

local degraded = condition(status.conditions, "Degraded")
local ready = condition(status.conditions, "Ready")
if (degraded ~= nil and degraded.status == "True") or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(degraded, describe(ready, "The ModelDeployment failed"))
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Triton servers to become ready")
return hs
