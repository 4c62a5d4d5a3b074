{{/*
One service's Deployment: (dict "root" $ "component" "fetcher|filter|uploader"), or one
destination's filter or uploader: (dict "root" $ "component" "filter|uploader" "destination"
NAME). The same image for all; the command picks the service (python -m services.<component>).
*/}}
{{- define "m2s.deployment" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $destination := .destination -}}
{{- $v := include "m2s.componentValues" . | fromJson -}}
{{- $values := $root.Values -}}
{{- $secretVars := include "m2s.secretVars" . | fromJsonArray -}}
{{- $clientSecret := include "m2s.destinationClientSecret" . | fromJson -}}
{{- $keyVault := and $values.secrets.keyVault.enabled (or (gt (len $secretVars) 0) $clientSecret.keyVault) -}}
{{- $destinationsKey := "" -}}
{{- if $values.destinations -}}{{- $destinationsKey = include "m2s.destinationsKey" . -}}{{- end -}}
{{- $ownAccount := "" -}}
{{- if and $destination (eq $component "uploader") -}}
{{- $ownAccount = include "m2s.destinationServiceAccount" . -}}
{{- end -}}
{{- $port := int $values.settings.HEALTH_PORT -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  {{- if $destination }}
  name: {{ include "m2s.destinationPrefix" $root }}-{{ $component }}-{{ $destination }}
  {{- else }}
  name: {{ include "m2s.fullname" $root }}-{{ $component }}
  {{- end }}
  labels:
    {{- include "m2s.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    {{- with $destination }}
    mati2sentinel/destination: {{ . | quote }}
    {{- end }}
spec:
  {{- if eq $component "fetcher" }}
  # One fetcher at a time: Recreate stops the old pod (it drains and releases the lease) before
  # the new one starts; the Redis lease also keeps a second one from syncing.
  replicas: {{ $v.replicas }}
  strategy:
    type: Recreate
  {{- else }}
  {{- if not $values.keda.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "m2s.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "m2s.selectorLabels" . | nindent 8 }}
        {{- include "m2s.podLabels" (dict "root" $root "workloadIdentity" (or $ownAccount $values.workloadIdentity.enabled)) | nindent 8 }}
      annotations:
        checksum/settings: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $destinationsKey }}
        checksum/destinations: {{ include "m2s.destinationsFileOf" . | sha256sum }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- if $ownAccount }}
      # The destination's own workload identity, for Sentinel; see values.yaml, destinations.
      serviceAccountName: {{ $ownAccount }}
      {{- else }}
      serviceAccountName: {{ include "m2s.serviceAccountName" $root }}
      {{- end }}
      automountServiceAccountToken: false
      # The services drain within DRAIN_TIMEOUT_SECONDS after SIGTERM; the kubelet waits longer.
      terminationGracePeriodSeconds: {{ include "m2s.terminationGracePeriodSeconds" $root }}
      enableServiceLinks: false
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "m2s.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: {{ $component }}
          image: {{ include "m2s.image" $root | quote }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          command: ["python", "-m", "services.{{ $component }}"]
          ports:
            - name: http
              containerPort: {{ $port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "m2s.fullname" $root }}-settings
          {{- with include "m2s.podEnv" (dict "ctx" . "ownAccount" $ownAccount) | trim }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          startupProbe:
            httpGet:
              path: /livez
              port: http
            periodSeconds: {{ $values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $values.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /livez
              port: http
            periodSeconds: {{ $values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: {{ $values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "m2s.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "m2s.volumeMounts" (dict "root" $root "keyVault" $keyVault "destinationsKey" $destinationsKey) | nindent 12 }}
      volumes:
        {{- include "m2s.volumes" (dict "root" $root "keyVault" $keyVault "destinationsKey" $destinationsKey) | nindent 8 }}
      {{- with include "m2s.placement" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
{{- end -}}

{{/*
The pieces every pod of the chart shares (the Deployments above, the reconcile CronJob): its
labels, non-root and read-only hardening, secret references, volumes and placement.
*/}}

{{/* Pod template labels besides the selector's: version, destination, workload identity:
(dict "root" $ "workloadIdentity" <whether the webhook projects a token into the pod>). With
destinations a destination's pods carry its name in their selector labels instead. */}}
{{- define "m2s.podLabels" -}}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- if not .root.Values.destinations }}
mati2sentinel/destination: {{ .root.Values.settings.DESTINATION | quote }}
{{- end }}
{{- if .workloadIdentity }}
azure.workload.identity/use: "true"
{{- end }}
{{- end -}}

{{- define "m2s.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "m2s.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A container's env: the destination it serves (DESTINATION), its secrets by secretKeyRef
and, in a pod with a destination's own ServiceAccount on Service Bus, the deployment's identity
for the bus: (dict "ctx" (dict "root" $ "component" … "destination" …) "ownAccount" NAME-or-"").
Empty when there is nothing to set; include it with trim. */}}
{{- define "m2s.podEnv" -}}
{{- $ctx := .ctx -}}
{{- $values := $ctx.root.Values -}}
{{- with $ctx.destination }}
- name: DESTINATION
  value: {{ . | quote }}
{{- end }}
{{- if and .ownAccount $values.workloadIdentity.enabled (eq $values.settings.BUS "servicebus") (not $values.secrets.keys.SERVICEBUS_CONNECTION_STRING) }}
# Service Bus (DefaultAzureCredential) is reached as the deployment, with
# this pod's token (the deployment's identity is federated with this
# ServiceAccount too); the webhook would set the destination's identity.
# The destinations file gives Sentinel the destination's.
- name: AZURE_CLIENT_ID
  value: {{ $values.workloadIdentity.clientId | quote }}
{{- with $values.workloadIdentity.tenantId }}
- name: AZURE_TENANT_ID
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- include "m2s.secretEnv" $ctx }}
{{- $clientSecret := include "m2s.destinationClientSecret" $ctx | fromJson }}
{{- if $clientSecret.var }}
# The destination's client secret, named by its block in the destinations file.
- name: {{ $clientSecret.var }}
  valueFrom:
    secretKeyRef:
      name: {{ $clientSecret.name }}
      key: {{ $clientSecret.key }}
{{- end }}
{{- end -}}

{{/* env entries of one component's secrets, by secretKeyRef: (dict "root" $ "component" …).
Starts with a newline: include it with trim. */}}
{{- define "m2s.secretEnv" -}}
{{- $root := .root -}}
{{- range (include "m2s.secretVars" . | fromJsonArray) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "m2s.secretName" $root }}
      key: {{ index $root.Values.secrets.keys . }}
{{- end }}
{{- end -}}

{{/* Mounts and volumes: (dict "root" $ "keyVault" <whether this pod mounts the CSI volume>
"destinationsKey" <the destinations ConfigMap key it reads, or "">). */}}
{{- define "m2s.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .destinationsKey }}
- name: destinations
  mountPath: {{ include "m2s.destinationsDir" .root }}
  readOnly: true
{{- end }}
{{- if .root.Values.caBundle.configMap }}
- name: ca-bundle
  mountPath: /etc/mati2sentinel/ca
  readOnly: true
{{- end }}
{{- if .keyVault }}
# Mounting the CSI volume is what makes the driver sync Key Vault into the Secret.
- name: keyvault
  mountPath: /mnt/secrets-store
  readOnly: true
{{- end }}
{{- end -}}

{{- define "m2s.volumes" -}}
{{- $values := .root.Values -}}
# The root filesystem is read-only; Python and the libraries get a small writable /tmp.
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .destinationsKey }}
# DESTINATIONS_FILE: every destination (fetcher, filters), or one with its secret reference
# (a destination's uploader and reconcile job), always under the same name.
- name: destinations
  configMap:
    name: {{ include "m2s.fullname" .root }}-destinations
    items:
      - key: {{ .destinationsKey }}
        path: destinations.yaml
{{- end }}
{{- if $values.caBundle.configMap }}
- name: ca-bundle
  configMap:
    name: {{ $values.caBundle.configMap }}
    items:
      - key: {{ $values.caBundle.key }}
        path: {{ $values.caBundle.key }}
{{- end }}
{{- if .keyVault }}
- name: keyvault
  csi:
    driver: secrets-store.csi.k8s.io
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ include "m2s.fullname" .root }}-keyvault
{{- end }}
{{- end -}}

{{/* nodeSelector, tolerations and affinity of every pod (empty when none is set; include it
with trim). */}}
{{- define "m2s.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
