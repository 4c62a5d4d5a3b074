{{/*
KEDA's ScaledObject of one filter or uploader: (dict "root" $ "component" "filter|uploader"
"destination" NAME-or-""). Without a destination, the single destination settings.DESTINATION;
with one, that destination's own subscription and queues, its Deployment and its overrides.
*/}}
{{- define "m2s.scaledObject" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $fullname := include "m2s.fullname" $root -}}
{{- $sb := eq $root.Values.keda.scaler "azure-servicebus" -}}
{{- $connection := $root.Values.secrets.keys.SERVICEBUS_CONNECTION_STRING -}}
{{- $redisPassword := $root.Values.keda.redis.passwordSecretKey -}}
{{- $v := include "m2s.componentValues" . | fromJson -}}
{{- $name := printf "%s-%s" $fullname $component -}}
{{- $destination := $root.Values.settings.DESTINATION -}}
{{- if .destination -}}
{{- $name = printf "%s-%s-%s" (include "m2s.destinationPrefix" $root) $component .destination -}}
{{- $destination = .destination -}}
{{- end -}}
# {{ $component }}: scaled on the depth of what it reads
{{- if eq $component "filter" }} (topic "indicators", subscription {{ $destination }})
{{- else }} (queues upload.{{ $destination }} and its priority lane revoke.{{ $destination }})
{{- end }}.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $name }}
  labels:
    {{- include "m2s.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    {{- with .destination }}
    mati2sentinel/destination: {{ . | quote }}
    {{- end }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicaCount: {{ $v.autoscaling.minReplicas }}
  maxReplicaCount: {{ $v.autoscaling.maxReplicas }}
  pollingInterval: {{ $root.Values.keda.pollingInterval }}
  cooldownPeriod: {{ $root.Values.keda.cooldownPeriod }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: {{ $root.Values.keda.scaleDownStabilizationSeconds }}
  triggers:
    {{- /* The uploader reads two queues: the priority lane (revocations) scales it too. */}}
    {{- $queues := ternary (list "") (list "upload" "revoke") (eq $component "filter") }}
    {{- range $queue := $queues }}
    {{- if $sb }}
    - type: azure-servicebus
      metadata:
        {{- if eq $component "filter" }}
        topicName: indicators
        subscriptionName: {{ $destination | quote }}
        {{- else }}
        queueName: {{ printf "%s.%s" $queue $destination | quote }}
        {{- end }}
        messageCount: {{ $v.autoscaling.messageCount | toString | quote }}
        {{- if not $connection }}
        {{- include "m2s.serviceBusScalerMetadata" $root | nindent 8 }}
        {{- end }}
      authenticationRef:
        name: {{ $fullname }}-scaler
    {{- else }}
    # Completed entries are deleted from the stream, so its length (XLEN) is the backlog:
    # waiting plus in-flight. Pending entries alone would miss what was never delivered.
    - type: redis-streams
      metadata:
        {{- include "m2s.redisScalerMetadata" $root | nindent 8 }}
        {{- if eq $component "filter" }}
        stream: {{ printf "m2s:{indicators/%s}:stream" $destination | quote }}
        {{- else }}
        stream: {{ printf "m2s:{%s.%s}:stream" $queue $destination | quote }}
        {{- end }}
        streamLength: {{ $v.autoscaling.messageCount | toString | quote }}
      {{- if $redisPassword }}
      authenticationRef:
        name: {{ $fullname }}-scaler
      {{- end }}
    {{- end }}
    {{- end }}
{{- end -}}
