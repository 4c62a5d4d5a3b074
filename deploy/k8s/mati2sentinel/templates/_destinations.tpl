{{/*
Several destinations (values `destinations`, DESIGN §6): one fetcher feeds them all through the
destinations file (DESTINATIONS_FILE); each destination has its own filter and uploader
Deployments, KEDA scaling, disruption budgets and, optionally, its own identity and reconcile
CronJob. Empty `destinations`: none of this is rendered and the chart is the single-destination
chart it always was.
*/}}

{{/* Where every pod that reads a destinations file finds it (the ConfigMap's key is mounted
under this name whichever file the pod reads). */}}
{{- define "m2s.destinationsDir" -}}/etc/mati2sentinel/destinations{{- end -}}
{{- define "m2s.destinationsPath" -}}{{ include "m2s.destinationsDir" . }}/destinations.yaml{{- end -}}

{{/* Name prefixes of a destination's objects. A destination's name has at most 24 characters:
<prefix>-uploader-<name> stays within the 63 of a label value and a DNS label (the ScaledObject
name becomes one on the HPA), <cronPrefix>-reconcile-<name> within the 52 of a CronJob. */}}
{{- define "m2s.destinationPrefix" -}}
{{- include "m2s.fullname" . | trunc 29 | trimSuffix "-" -}}
{{- end -}}
{{- define "m2s.destinationCronPrefix" -}}
{{- include "m2s.fullname" . | trunc 17 | trimSuffix "-" -}}
{{- end -}}

{{/* The environment variable that carries a destination's client secret to its uploader:
AZURE_CLIENT_SECRET_<NAME> (names have no '_', so none collides). Not AZURE_CLIENT_SECRET
itself, which azure-identity's environment credential would take for the bus too. */}}
{{- define "m2s.clientSecretVar" -}}
{{- printf "AZURE_CLIENT_SECRET_%s" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/* The destination's own ServiceAccount (its workload identity), or "" when it has none:
(dict "root" $ "destination" NAME). */}}
{{- define "m2s.destinationServiceAccount" -}}
{{- $d := index .root.Values.destinations .destination -}}
{{- if and $d.workloadIdentity $d.workloadIdentity.clientId -}}
{{- printf "%s-uploader-%s" (include "m2s.destinationPrefix" .root) .destination -}}
{{- end -}}
{{- end -}}

{{/* A destination's client secret as one pod reads it: {"var", "name", "key", "keyVault"} for
its uploader and reconcile job when it has one, {} otherwise: (dict "root" $ "component" …
"destination" NAME). "keyVault": the key is synced from Key Vault into the chart's Secret, so
the pod mounts the CSI volume. */}}
{{- define "m2s.destinationClientSecret" -}}
{{- $result := dict -}}
{{- if and .destination (has .component (list "uploader" "reconcile")) -}}
{{- $d := index .root.Values.destinations .destination -}}
{{- if and $d.clientSecret $d.clientSecret.key -}}
{{- $kv := and .root.Values.secrets.keyVault.enabled (not $d.clientSecret.secretName) -}}
{{- $name := default (include "m2s.secretName" .root) $d.clientSecret.secretName -}}
{{- $result = dict "var" (include "m2s.clientSecretVar" .destination) "name" $name "key" $d.clientSecret.key "keyVault" $kv -}}
{{- end -}}
{{- end -}}
{{- toJson $result -}}
{{- end -}}

{{/* Whether a destination brings its own identity (a workload identity or a client secret), so
the deployment's AZURE_CLIENT_SECRET is not its uploader's business. */}}
{{- define "m2s.destinationOwnIdentity" -}}
{{- if .destination -}}
{{- $d := index .root.Values.destinations .destination -}}
{{- if or (include "m2s.destinationServiceAccount" .) (and $d.clientSecret $d.clientSecret.key) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A destinations file, as shared.core.destinations reads it: (dict "root" $ "only" NAME-or-""
"secrets" bool).
- only "": every destination, without secret references: what the fetcher and the filters read
  (they use no Sentinel credential, and a reference to a variable their pod lacks would stop
  them: the services resolve every reference in the file they read).
- only NAME, secrets true: that destination alone, with its client secret reference: what its
  uploader and reconcile job read, the pods that carry the variable.
Each block: the destination's settings (as the services read them: TRUE/FALSE, plain numbers),
AZURE_CLIENT_ID/AZURE_TENANT_ID from its workloadIdentity unless the settings name them, and
with a client secret an empty AZURE_FEDERATED_TOKEN_FILE: the pod may hold the deployment's
workload identity token (for the bus), which would otherwise win over the secret.
*/}}
{{- define "m2s.destinationsFile" -}}
{{- $root := .root -}}
{{- $only := .only -}}
{{- $secrets := .secrets -}}
{{- $all := dict -}}
{{- range $name, $d := $root.Values.destinations -}}
{{- if or (not $only) (eq $name $only) -}}
{{- $block := dict -}}
{{- range $key, $value := ($d.settings | default dict) -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $_ := set $block $key (include "m2s.envValue" $value) -}}
{{- end -}}
{{- end -}}
{{- with $d.workloadIdentity -}}
{{- if and .clientId (not (hasKey $block "AZURE_CLIENT_ID")) -}}
{{- $_ := set $block "AZURE_CLIENT_ID" .clientId -}}
{{- end -}}
{{- if and .tenantId (not (hasKey $block "AZURE_TENANT_ID")) -}}
{{- $_ := set $block "AZURE_TENANT_ID" .tenantId -}}
{{- end -}}
{{- end -}}
{{- if and $secrets $d.clientSecret $d.clientSecret.key -}}
{{- $_ := set $block "AZURE_CLIENT_SECRET" (dict "env" (include "m2s.clientSecretVar" $name)) -}}
{{- $_ := set $block "AZURE_FEDERATED_TOKEN_FILE" "" -}}
{{- end -}}
{{- $_ := set $all $name $block -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "destinations" $all) -}}
{{- end -}}

{{/* The ConfigMap key a pod mounts as its destinations file: (dict "root" $ "component" …
"destination" NAME-or-nil). */}}
{{- define "m2s.destinationsKey" -}}
{{- if and .destination (has .component (list "uploader" "reconcile")) -}}
{{- printf "destination-%s.yaml" .destination -}}
{{- else -}}
destinations.yaml
{{- end -}}
{{- end -}}

{{/* The file content behind that key, for the pod's checksum: a pod restarts when what it
reads changes, not when another destination's block does. */}}
{{- define "m2s.destinationsFileOf" -}}
{{- if .destination -}}
{{- include "m2s.destinationsFile" (dict "root" .root "only" .destination "secrets" (has .component (list "uploader" "reconcile"))) -}}
{{- else -}}
{{- include "m2s.destinationsFile" (dict "root" .root "only" "" "secrets" false) -}}
{{- end -}}
{{- end -}}

{{/* filter or uploader values with a destination's overrides laid over them, as JSON:
(dict "root" $ "component" … "destination" NAME-or-nil). Explicit zeros count (replicas: 0). */}}
{{- define "m2s.componentValues" -}}
{{- $v := deepCopy (index .root.Values .component) -}}
{{- if .destination -}}
{{- $o := index (index .root.Values.destinations .destination) .component | default dict -}}
{{- if hasKey $o "replicas" -}}{{- $_ := set $v "replicas" $o.replicas -}}{{- end -}}
{{- with $o.resources -}}
{{- $_ := set $v "resources" (mergeOverwrite (deepCopy ($v.resources | default dict)) (deepCopy .)) -}}
{{- end -}}
{{- range $key, $value := ($o.autoscaling | default dict) -}}
{{- $_ := set $v.autoscaling $key $value -}}
{{- end -}}
{{- range $key, $value := ($o.pdb | default dict) -}}
{{- $_ := set $v.pdb $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $v -}}
{{- end -}}

{{/* Checks of the destinations that a JSON schema cannot express; fail fast at install. */}}
{{- define "m2s.validateDestinations" -}}
{{- $root := . -}}
{{- $s := .Values.settings -}}
{{- $kv := .Values.secrets.keyVault -}}
{{- $chartKeys := list -}}
{{- range $name, $key := .Values.secrets.keys -}}{{- if $key -}}{{- $chartKeys = append $chartKeys $key -}}{{- end -}}{{- end -}}
{{- range $name, $d := .Values.destinations -}}
{{- $settings := $d.settings | default dict -}}
{{- $wi := $d.workloadIdentity | default dict -}}
{{- $cs := $d.clientSecret | default dict -}}
{{- $workspace := ternary (toString (index $settings "AZURE_WORKSPACE_ID")) $s.AZURE_WORKSPACE_ID (hasKey $settings "AZURE_WORKSPACE_ID") -}}
{{- if not $workspace -}}
{{- fail (printf "destinations.%s: its Sentinel workspace is required: set destinations.%s.settings.AZURE_WORKSPACE_ID (or settings.AZURE_WORKSPACE_ID for every destination)" $name $name) -}}
{{- end -}}
{{- if and $wi.clientId $cs.key -}}
{{- fail (printf "destinations.%s: give it a workloadIdentity or a clientSecret, not both (workload identity would win)" $name) -}}
{{- end -}}
{{- if $cs.key -}}
{{- $clientId := ternary (toString (index $settings "AZURE_CLIENT_ID")) $s.AZURE_CLIENT_ID (hasKey $settings "AZURE_CLIENT_ID") -}}
{{- $tenantId := ternary (toString (index $settings "AZURE_TENANT_ID")) $s.AZURE_TENANT_ID (hasKey $settings "AZURE_TENANT_ID") -}}
{{- if not (and $clientId $tenantId) -}}
{{- fail (printf "destinations.%s: a client secret needs its application: set destinations.%s.settings.AZURE_CLIENT_ID and AZURE_TENANT_ID" $name $name) -}}
{{- end -}}
{{- if and $cs.keyVaultObject (not $kv.enabled) -}}
{{- fail (printf "destinations.%s.clientSecret.keyVaultObject needs secrets.keyVault.enabled" $name) -}}
{{- end -}}
{{- if and $cs.keyVaultObject $cs.secretName -}}
{{- fail (printf "destinations.%s.clientSecret: keyVaultObject is synced into the chart's Secret: leave secretName empty" $name) -}}
{{- end -}}
{{- if and $kv.enabled (not $cs.secretName) (not $cs.keyVaultObject) -}}
{{- fail (printf "destinations.%s.clientSecret: with secrets.keyVault the chart's Secret holds only what Key Vault syncs: set keyVaultObject (the Key Vault secret) or secretName (another Secret)" $name) -}}
{{- end -}}
{{- if and $cs.keyVaultObject (has $cs.key $chartKeys) -}}
{{- fail (printf "destinations.%s.clientSecret.key %s is already a key of secrets.keys: each synced secret needs its own key" $name $cs.key) -}}
{{- end -}}
{{- end -}}
{{- if $root.Values.keda.enabled -}}
{{- $u := include "m2s.componentValues" (dict "root" $root "component" "uploader" "destination" $name) | fromJson -}}
{{- $rebuild := ternary (toString (index $settings "CACHE_REBUILD")) (toString $s.CACHE_REBUILD) (hasKey $settings "CACHE_REBUILD") -}}
{{- if and (eq (int $u.autoscaling.minReplicas) 0) (ne (lower $rebuild) "off") -}}
{{- fail (printf "destinations.%s: uploader minReplicas 0 needs CACHE_REBUILD=off: with auto, a filter holding for the seen cache's rebuild waits for an uploader that KEDA never starts" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $keyVaultObjects := list -}}
{{- range $name, $d := .Values.destinations -}}
{{- if and $d.clientSecret $d.clientSecret.keyVaultObject -}}
{{- if has $d.clientSecret.key $keyVaultObjects -}}
{{- fail (printf "destinations.%s.clientSecret.key %s is used by another destination's keyVaultObject: each synced secret needs its own key" $name $d.clientSecret.key) -}}
{{- end -}}
{{- $keyVaultObjects = append $keyVaultObjects $d.clientSecret.key -}}
{{- end -}}
{{- end -}}
{{- end -}}
