-- Argo CD health check for mlplane.dev/ABTest (Lua 5.1, as Argo CD runs it).
-- Healthy when Ready is True, Degraded when Ready is False or the spec is invalid,
-- Progressing otherwise.

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
local phase = status.phase or "Pending"

if ready ~= nil and ready.status == "True" then
  local message = describe(ready, "Phase " .. phase)
  if status.decision ~= nil then
    message = message .. " (decision: " .. tostring(status.decision) .. ")"
  end
  return { status = "Healthy", message = message }
end
if ready ~= nil and ready.status == "False" then
  return { status = "Degraded", message = describe(ready, "Not ready") }
end
return { status = "Progressing", message = "Phase " .. phase .. ": " .. describe(ready, "waiting for traffic") }
