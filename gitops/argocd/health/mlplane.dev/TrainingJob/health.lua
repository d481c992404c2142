-- Argo CD health check for mlplane.dev/TrainingJob (Lua 5.1, as Argo CD runs it).
-- Healthy once the job succeeded, Degraded when it failed, its spec is invalid or it is stalled
-- (MLflow refuses what it needs: someone must act), Suspended while suspended, Progressing
-- otherwise: a training run is work in progress until it ends.

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
local phase = status.phase or "Pending"
local succeeded = find_condition(status, "Succeeded")

if succeeded ~= nil and succeeded.status == "True" then
  return { status = "Healthy", message = describe(succeeded, "Training succeeded") }
end
if succeeded ~= nil and succeeded.status == "False" then
  return { status = "Degraded", message = describe(succeeded, "Training failed") }
end
local stalled = find_condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = describe(stalled, "Stalled: MLflow refused") }
end
-- The Running condition carries the attempt's progress ("attempt 2 is running").
local running = find_condition(status, "Running")
if phase == "Suspended" then
  return { status = "Suspended", message = describe(running, "TrainingJob is suspended") }
end

local message = "Phase " .. phase
if status.attempts ~= nil and status.attempts > 0 then
  message = message .. ", attempt " .. tostring(status.attempts)
end
if status.preemptions ~= nil and status.preemptions > 0 then
  message = message .. ", " .. tostring(status.preemptions) .. " preemption(s)"
end
local detail = describe(running, describe(succeeded, nil))
if detail ~= nil then
  message = message .. ": " .. detail
end
return { status = "Progressing", message = message }
