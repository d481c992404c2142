-- Argo CD health check for mlplane.dev/ModelDeployment (Lua 5.1, as Argo CD runs it).
-- Healthy while the model is served (Ready True; drift is reported in the message, not as
-- Degraded: the model still serves and drift has its own alerts and retraining), Degraded when
-- Ready is False or the spec is invalid, Progressing while the RayService comes up.

-- common: the same in every mlplane health check --------------------------------------------
local function find_condition(status, condition_type)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

-- Progressing until the operator has seen the current spec; Degraded on an invalid spec.
local function common_health(obj)
  local status = obj.status
  if type(status) ~= "table" then
    return { status = "Progressing", message = "Waiting for the mlplane operator to observe the resource" }
  end
  local generation = obj.metadata and obj.metadata.generation
  if generation ~= nil and status.observedGeneration ~= generation then
    return {
      status = "Progressing",
      message = "Waiting for the mlplane operator to observe generation " .. tostring(generation)
        .. " (observed: " .. tostring(status.observedGeneration or "none") .. ")",
    }
  end
  local invalid = find_condition(status, "InvalidSpec")
  if invalid ~= nil and invalid.status == "True" then
    return { status = "Degraded", message = describe(invalid, "The spec is invalid") }
  end
  return nil
end
-- end common -------------------------------------------------------------------------------

local hs = common_health(obj)
if hs ~= nil then
  return hs
end

local status = obj.status
local ready = find_condition(status, "Ready")

if ready ~= nil and ready.status == "True" then
  local message = describe(ready, "Serving")
  if status.servedVersion ~= nil then
    message = "Serving version " .. tostring(status.servedVersion) .. ": " .. message
  end
  local drifted = find_condition(status, "Drifted")
  if drifted ~= nil and drifted.status == "True" then
    message = message .. "; drift detected: " .. describe(drifted, "input drift")
  end
  return { status = "Healthy", message = message }
end
if ready ~= nil and ready.status == "False" then
  return { status = "Degraded", message = describe(ready, "Not ready") }
end
return {
  status = "Progressing",
  message = "Phase " .. (status.phase or "Pending") .. ": " .. describe(ready, "waiting for the model to be served"),
}
