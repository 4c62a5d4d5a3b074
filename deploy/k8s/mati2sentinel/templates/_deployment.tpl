{{/*
One service's Deployment: (dict "root" $ "component" "fetcher|filter|uploader").
The same image for all three; the command picks the service (python -m services.<component>).
*/}}
{{- define "m2s.deployment" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $v := index $root.Values $component -}}
{{- $values := $root.Values -}}
{{- $secretVars := include "m2s.secretVars" . | fromJsonArray -}}
{{- $keyVault := and $values.secrets.keyVault.enabled (gt (len $secretVars) 0) -}}
{{- $port := int $values.settings.HEALTH_PORT -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "m2s.fullname" $root }}-{{ $component }}
  labels:
    {{- include "m2s.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
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
        {{- include "m2s.podLabels" $root | nindent 8 }}
      annotations:
        checksum/settings: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "m2s.serviceAccountName" $root }}
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
          {{- if $secretVars }}
          env:
            {{- include "m2s.secretEnv" . | trim | nindent 12 }}
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
            {{- include "m2s.volumeMounts" (dict "root" $root "keyVault" $keyVault) | nindent 12 }}
      volumes:
        {{- include "m2s.volumes" (dict "root" $root "keyVault" $keyVault) | nindent 8 }}
      {{- with include "m2s.placement" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
{{- end -}}

{{/*
The pieces every pod of the chart shares (the Deployments above, the reconcile CronJob): its
labels, non-root and read-only hardening, secret references, volumes and placement.
*/}}

{{/* Pod template labels besides the selector's: version, destination, workload identity. */}}
{{- define "m2s.podLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
mati2sentinel/destination: {{ .Values.settings.DESTINATION | quote }}
{{- if .Values.workloadIdentity.enabled }}
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

{{/* Mounts and volumes: (dict "root" $ "keyVault" <whether this pod mounts the CSI volume>). */}}
{{- define "m2s.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
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
