-- Argo CD health check for fathom.dev/FathomRecipe.
-- Reads the conditions the operator writes (Kubernetes API conventions) and maps them onto
-- Argo CD's health states. A failed, invalid or over-budget recipe is Degraded; a suspended one
-- Suspended; a finished one Healthy; everything else (including "not yet seen by the operator",
-- or a status older than the spec) is Progressing.
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation or nil
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "The operator has not yet seen generation " .. tostring(generation)
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local function isTrue(name)
  return conditions[name] ~= nil and conditions[name].status == "True"
end
local function messageOf(name, fallback)
  local c = conditions[name]
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end
if isTrue("Invalid") then
  return {status = "Degraded", message = messageOf("Invalid", "The recipe is invalid")}
end
if isTrue("Failed") then
  return {status = "Degraded", message = messageOf("Failed", "A stage failed")}
end
if isTrue("BudgetExceeded") then
  return {status = "Degraded", message = messageOf("BudgetExceeded", "The budget is exhausted")}
end
if isTrue("Suspended") then
  return {status = "Suspended", message = messageOf("Suspended", "Suspended")}
end
if isTrue("Ready") then
  return {status = "Healthy", message = messageOf("Ready", "The recipe finished")}
end
hs.message = messageOf("Progressing", "Running")
if obj.status.currentStage ~= nil then
  hs.message = hs.message .. " (stage " .. obj.status.currentStage .. ")"
end
return hs
