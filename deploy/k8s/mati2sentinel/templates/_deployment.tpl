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
        app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
        mati2sentinel/destination: {{ $values.settings.DESTINATION | quote }}
        {{- if $values.workloadIdentity.enabled }}
        azure.workload.identity/use: "true"
        {{- end }}
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
        runAsNonRoot: true
        runAsUser: {{ $values.podSecurity.runAsUser }}
        runAsGroup: {{ $values.podSecurity.runAsGroup }}
        fsGroup: {{ $values.podSecurity.runAsGroup }}
        seccompProfile:
          type: RuntimeDefault
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
            {{- range $secretVars }}
            - name: {{ . }}
              valueFrom:
                secretKeyRef:
                  name: {{ include "m2s.secretName" $root }}
                  key: {{ index $values.secrets.keys . }}
            {{- end }}
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
            runAsNonRoot: true
            runAsUser: {{ $values.podSecurity.runAsUser }}
            runAsGroup: {{ $values.podSecurity.runAsGroup }}
            allowPrivilegeEscalation: false
            privileged: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $values.caBundle.configMap }}
            - name: ca-bundle
              mountPath: /etc/mati2sentinel/ca
              readOnly: true
            {{- end }}
            {{- if $keyVault }}
            # Mounting the CSI volume is what makes the driver sync Key Vault into the Secret.
            - name: keyvault
              mountPath: /mnt/secrets-store
              readOnly: true
            {{- end }}
      volumes:
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
        {{- if $keyVault }}
        - name: keyvault
          csi:
            driver: secrets-store.csi.k8s.io
            readOnly: true
            volumeAttributes:
              secretProviderClass: {{ include "m2s.fullname" $root }}-keyvault
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
