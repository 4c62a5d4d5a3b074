{{/* Names and labels. */}}
{{- define "m2s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "m2s.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "m2s.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "m2s.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mati2sentinel
{{- if not .Values.destinations }}
mati2sentinel/destination: {{ .Values.settings.DESTINATION | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "filter"), and of one
destination's: (dict "root" $ "component" "filter" "destination" "contoso"). */}}
{{- define "m2s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "m2s.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .destination }}
mati2sentinel/destination: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "m2s.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "m2s.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "m2s.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret every secretKeyRef points at: the existing one, or the one synced from Key Vault. */}}
{{- define "m2s.secretName" -}}
{{- if .Values.secrets.keyVault.enabled -}}
{{- default (printf "%s-keyvault" (include "m2s.fullname" .)) .Values.secrets.keyVault.secretName -}}
{{- else -}}
{{- .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* A setting as the services read it: booleans TRUE/FALSE, numbers without exponent. */}}
{{- define "m2s.envValue" -}}
{{- if kindIs "bool" . -}}
{{- ternary "TRUE" "FALSE" . -}}
{{- else if kindIs "float64" . -}}
{{- if eq (floor .) . -}}{{- printf "%.0f" . -}}{{- else -}}{{- toString . -}}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Seconds the kubelet waits after SIGTERM: the services' drain time plus a margin. */}}
{{- define "m2s.terminationGracePeriodSeconds" -}}
{{- $drain := ceil (float64 .Values.settings.DRAIN_TIMEOUT_SECONDS) | int -}}
{{- add $drain (int .Values.drain.marginSeconds) -}}
{{- end -}}

{{/* Secret variables each component reads (only those whose key is set). The reconcile job
reads the workspace as the uploader does, and with repair looks records up at MATI as the
fetcher does. */}}
{{- define "m2s.secretVars" -}}
{{- $keys := .root.Values.secrets.keys -}}
{{- $vars := list -}}
{{- $repair := and (eq .component "reconcile") .root.Values.reconcile.repair -}}
{{- if or (eq .component "fetcher") $repair -}}{{- $vars = list "MATI_API_KEY" "MATI_API_SECRET" -}}{{- end -}}
{{- if and (has .component (list "uploader" "reconcile")) $keys.AZURE_CLIENT_SECRET (not (include "m2s.destinationOwnIdentity" .)) -}}{{- $vars = append $vars "AZURE_CLIENT_SECRET" -}}{{- end -}}
{{- if $keys.SERVICEBUS_CONNECTION_STRING -}}{{- $vars = append $vars "SERVICEBUS_CONNECTION_STRING" -}}{{- end -}}
{{- if $keys.REDIS_URL -}}{{- $vars = append $vars "REDIS_URL" -}}{{- end -}}
{{- toJson $vars -}}
{{- end -}}

{{/* Short Service Bus namespace name and KEDA cloud from the fully qualified namespace. */}}
{{- define "m2s.serviceBusScalerMetadata" -}}
{{- $fqdn := .Values.settings.SERVICEBUS_NAMESPACE -}}
{{- $parts := splitList "." $fqdn -}}
{{- $suffix := join "." (rest $parts) -}}
namespace: {{ first $parts | quote }}
{{- if eq $suffix "servicebus.windows.net" }}
cloud: AzurePublicCloud
{{- else if eq $suffix "servicebus.usgovcloudapi.net" }}
cloud: AzureUSGovernmentCloud
{{- else if eq $suffix "servicebus.chinacloudapi.cn" }}
cloud: AzureChinaCloud
{{- else }}
cloud: Private
endpointSuffix: {{ $suffix | quote }}
{{- end }}
{{- end -}}

{{/* redis-streams scaler connection metadata, from keda.redis or settings.REDIS_URL. */}}
{{- define "m2s.redisScalerMetadata" -}}
{{- $r := .Values.keda.redis -}}
{{- $url := urlParse .Values.settings.REDIS_URL -}}
{{- $address := $r.address -}}
{{- if not $address -}}
{{- $address = $url.host -}}
{{- if not (regexMatch ":[0-9]+$" $address) -}}{{- $address = printf "%s:6379" $address -}}{{- end -}}
{{- end -}}
{{- $tls := $r.enableTLS -}}
{{- if eq (toString $tls) "" -}}{{- $tls = eq $url.scheme "rediss" -}}{{- end -}}
{{- $db := $r.databaseIndex -}}
{{- if eq (toString $db) "" -}}{{- $db = default "0" (trimPrefix "/" $url.path) -}}{{- end -}}
address: {{ $address | quote }}
enableTLS: {{ $tls | toString | lower | quote }}
databaseIndex: {{ $db | toString | quote }}
{{- end -}}

{{/* Checks across values that a JSON schema cannot express well; fail fast at install. */}}
{{- define "m2s.validate" -}}
{{- $s := .Values.settings -}}
{{- $sec := .Values.secrets -}}
{{- $wi := .Values.workloadIdentity -}}
{{- if not (or $sec.existingSecret $sec.keyVault.enabled) -}}
{{- fail "secrets: set secrets.existingSecret to the Secret holding the credentials, or enable secrets.keyVault" -}}
{{- end -}}
{{- if and $sec.keyVault.enabled (not $sec.keyVault.name) -}}
{{- fail "secrets.keyVault.name is required when secrets.keyVault.enabled" -}}
{{- end -}}
{{- if and $sec.keyVault.enabled (not (or $sec.keyVault.tenantId $wi.tenantId)) -}}
{{- fail "secrets.keyVault.tenantId (or workloadIdentity.tenantId) is required when secrets.keyVault.enabled" -}}
{{- end -}}
{{- if and $sec.keyVault.enabled (not $wi.enabled) -}}
{{- fail "secrets.keyVault reads Key Vault with workload identity: enable workloadIdentity" -}}
{{- end -}}
{{- /* With destinations, each one is checked for its workspace and identity
(m2s.validateDestinations); the deployment's identity is needed only by those without one. */ -}}
{{- $deploymentIdentity := not .Values.destinations -}}
{{- range $name, $_ := .Values.destinations -}}
{{- if not (include "m2s.destinationOwnIdentity" (dict "root" $ "destination" $name)) -}}{{- $deploymentIdentity = true -}}{{- end -}}
{{- end -}}
{{- if and (not .Values.destinations) (not $s.AZURE_WORKSPACE_ID) -}}
{{- fail "settings.AZURE_WORKSPACE_ID is required (the uploader needs the Sentinel workspace GUID)" -}}
{{- end -}}
{{- include "m2s.validateDestinations" . -}}
{{- if and $wi.enabled (not $wi.clientId) -}}
{{- fail "workloadIdentity.clientId is required when workloadIdentity.enabled (the managed identity's client id)" -}}
{{- end -}}
{{- if and (not $wi.enabled) $deploymentIdentity -}}
{{- if not $sec.keys.AZURE_CLIENT_SECRET -}}
{{- fail "without workload identity the uploader needs a client secret: set secrets.keys.AZURE_CLIENT_SECRET" -}}
{{- end -}}
{{- if not (and $s.AZURE_CLIENT_ID $s.AZURE_TENANT_ID) -}}
{{- fail "without workload identity settings.AZURE_CLIENT_ID and settings.AZURE_TENANT_ID are required" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $s.BUS "servicebus") (not $s.SERVICEBUS_NAMESPACE) -}}
{{- fail "settings.SERVICEBUS_NAMESPACE is required with BUS=servicebus (e.g. my-namespace.servicebus.windows.net)" -}}
{{- end -}}
{{- if and (eq $s.BUS "servicebus") (not $wi.enabled) (not $sec.keys.SERVICEBUS_CONNECTION_STRING) -}}
{{- fail "with BUS=servicebus and no workload identity, set secrets.keys.SERVICEBUS_CONNECTION_STRING" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.destinations) (eq (int .Values.uploader.autoscaling.minReplicas) 0) (ne (lower (toString $s.CACHE_REBUILD)) "off") -}}
{{- fail "uploader.autoscaling.minReplicas 0 needs settings.CACHE_REBUILD=off: with auto, a filter holding for the seen cache's rebuild waits for an uploader that KEDA never starts" -}}
{{- end -}}
{{- if not $sec.keys.REDIS_URL -}}
{{- $host := (urlParse $s.REDIS_URL).hostname -}}
{{- if or (eq $host "127.0.0.1") (eq $host "localhost") (eq $host "::1") -}}
{{- fail "settings.REDIS_URL points at localhost, where no Redis runs in these pods: set it (or secrets.keys.REDIS_URL when it carries a password)" -}}
{{- end -}}
{{- end -}}
{{- $otlp := .Values.opentelemetry.endpoint -}}
{{- if and $otlp .Values.networkPolicy.enabled -}}
{{- $url := urlParse $otlp -}}
{{- $port := ternary "443" "80" (eq $url.scheme "https") -}}
{{- if regexMatch ":[0-9]+$" $url.host -}}{{- $port = regexFind "[0-9]+$" $url.host -}}{{- end -}}
{{- $open := list -}}
{{- range (concat .Values.networkPolicy.otlp.ports .Values.networkPolicy.egressPorts) -}}
{{- $open = append $open (toString .port) -}}
{{- end -}}
{{- if not (has $port $open) -}}
{{- fail (printf "opentelemetry.endpoint is on port %s, which the NetworkPolicy does not open: add it to networkPolicy.otlp.ports" $port) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled -}}
{{- fail "monitoring: enable podMonitor or serviceMonitor, not both (each scrapes every pod)" -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- if and (eq .Values.keda.scaler "azure-servicebus") (ne $s.BUS "servicebus") -}}
{{- fail "keda.scaler azure-servicebus needs settings.BUS=servicebus (use redis-streams with BUS=redis)" -}}
{{- end -}}
{{- if and (eq .Values.keda.scaler "redis-streams") (ne $s.BUS "redis") -}}
{{- fail "keda.scaler redis-streams needs settings.BUS=redis (use azure-servicebus with BUS=servicebus)" -}}
{{- end -}}
{{- if and (eq .Values.keda.scaler "redis-streams") $sec.keys.REDIS_URL (not .Values.keda.redis.address) -}}
{{- fail "REDIS_URL comes from the Secret: set keda.redis.address (host:port) and keda.redis.passwordSecretKey for the scaler" -}}
{{- end -}}
{{- end -}}
{{- end -}}
