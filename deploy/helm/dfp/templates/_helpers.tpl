{{/*
Names and labels.
*/}}
{{- define "dfp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dfp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dfp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dfp.labels" -}}
helm.sh/chart: {{ include "dfp.chart" . }}
{{ include "dfp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dfp
{{- end -}}

{{- define "dfp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dfp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "inference") */}}
{{- define "dfp.componentLabels" -}}
{{ include "dfp.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dfp.componentSelector" -}}
{{ include "dfp.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dfp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dfp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dfp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dfp.inference.name" -}}{{ include "dfp.fullname" . }}-inference{{- end -}}
{{- define "dfp.inference.service" -}}{{ include "dfp.fullname" . }}-inference{{- end -}}
{{- define "dfp.pipelines.configMap" -}}{{ default (printf "%s-pipelines" (include "dfp.fullname" .)) .Values.pipelines.configMap }}{{- end -}}

{{/* Where the projected credential files are mounted. */}}
{{- define "dfp.secretsDir" -}}/etc/dfp/secrets{{- end -}}

{{/*
Whether the inference pods run as one multi-process cluster.
*/}}
{{- define "dfp.inference.isCluster" -}}
{{- if eq .Values.inference.mode "cluster" -}}true{{- end -}}
{{- end -}}

{{/*
The hostfile: one host:port per process, in process (= pod ordinal) order.
*/}}
{{- define "dfp.hostfile" -}}
{{- $name := include "dfp.inference.name" . -}}
{{- $svc := include "dfp.inference.service" . -}}
{{- range $i := until (int .Values.inference.replicas) }}
{{ printf "%s-%d.%s.%s.svc.%s:%d" $name $i $svc $.Release.Namespace $.Values.clusterDomain (int $.Values.inference.cluster.port) }}
{{- end }}
{{- end -}}

{{/*
A value as `dfp run --var` reads it: whole numbers without an exponent, null as null. Kubernetes expands
$(NAME) in args, so a literal "$(" is written "$$(".
*/}}
{{- define "dfp.varValue" -}}
{{- $v := . -}}
{{- if kindIs "invalid" $v -}}null
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else -}}{{ toString $v | replace "$(" "$$(" }}
{{- end -}}
{{- end -}}

{{/*
The variables a shipped pipeline file declares, as a JSON list; "null" when the pipeline comes from the
user's own ConfigMap (the chart cannot read it). (dict "root" $ "file" "azure-training.yaml")
*/}}
{{- define "dfp.declaredVars" -}}
{{- $root := .root -}}
{{- if $root.Values.pipelines.configMap -}}
null
{{- else -}}
{{- $text := "" -}}
{{- if hasKey $root.Values.pipelines.files .file -}}
{{- $text = index $root.Values.pipelines.files .file -}}
{{- else -}}
{{- $text = $root.Files.Get (printf "pipelines/%s" .file) -}}
{{- end -}}
{{- if not $text -}}
{{- $shipped := list -}}
{{- range $path, $_ := $root.Files.Glob "pipelines/*.yaml" }}{{ $shipped = append $shipped (base $path) }}{{ end -}}
{{- range $name, $_ := $root.Values.pipelines.files }}{{ $shipped = append $shipped $name }}{{ end -}}
{{- fail (printf "pipeline %q is not in the chart's pipelines ConfigMap (%s); add it under pipelines.files or name your own pipelines.configMap" .file (join ", " (sortAlpha $shipped))) -}}
{{- end -}}
{{- $doc := fromYaml $text -}}
{{- if hasKey $doc "Error" -}}
{{- fail (printf "pipeline %s is not valid YAML: %s" .file (get $doc "Error")) -}}
{{- end -}}
{{- keys (default (dict) (get $doc "vars")) | sortAlpha | toJson -}}
{{- end -}}
{{- end -}}

{{/*
`--var NAME=VALUE` arguments: (dict "root" $ "file" FILE "vars" DICT "what" "inference"). With a shipped
pipeline every variable must be one it declares (dfp refuses others), so a mistake fails here, naming the
value that set it, instead of in a crash-looping pod.
*/}}
{{- define "dfp.varArgs" -}}
{{- $declared := include "dfp.declaredVars" (dict "root" .root "file" .file) | fromJsonArray -}}
{{- $file := .file -}}
{{- $what := .what -}}
{{- range $k := keys .vars | sortAlpha }}
{{- if and $declared (not (has $k $declared)) }}
{{- fail (printf "%s: pipeline %s declares no variable %q (it declares: %s); check %s.pipeline and the values that set %s" $what $file $k (join ", " $declared) $what $k) }}
{{- end }}
- --var
- {{ printf "%s=%s" $k (include "dfp.varValue" (index $.vars $k)) | toJson }}
{{- end }}
{{- end -}}

{{/*
The variables the chart sets from its values for a `dfp run` of the inference pipeline (user vars win).
*/}}
{{- define "dfp.inference.vars" -}}
{{- $v := .Values -}}
{{- $d := dict -}}
{{- $declared := include "dfp.declaredVars" (dict "root" . "file" $v.inference.pipeline) | fromJsonArray -}}
{{- if $v.registry.location }}{{ $_ := set $d "models" $v.registry.location }}{{ end -}}
{{- if and $declared (has "models" $declared) (not $v.registry.location) (not (hasKey $v.inference.vars "models")) -}}
{{- fail (printf "registry.location is required: pipeline %s reads its models from it (s3://BUCKET/PREFIX, mlflow://HOST:PORT, or a directory on registry.volume)" $v.inference.pipeline) -}}
{{- end -}}
{{- if $v.kafka.brokers }}{{ $_ := set $d "brokers" $v.kafka.brokers }}{{ end -}}
{{- if and $declared (has "brokers" $declared) (not $v.kafka.brokers) (not (hasKey $v.inference.vars "brokers")) -}}
{{- fail (printf "kafka.brokers is required: pipeline %s reads from Kafka (host:port[,host:port…])" $v.inference.pipeline) -}}
{{- end -}}
{{- if $v.kafka.topic }}{{ $_ := set $d "topic" $v.kafka.topic }}{{ end -}}
{{- if $v.kafka.group }}{{ $_ := set $d "group" $v.kafka.group }}{{ end -}}
{{- if $v.kafka.alertsTopic }}{{ $_ := set $d "alerts_topic" $v.kafka.alertsTopic }}{{ end -}}
{{- if $v.kafka.incidentsTopic }}{{ $_ := set $d "incidents_topic" $v.kafka.incidentsTopic }}{{ end -}}
{{- if $v.elasticsearch.url }}
{{- $_ := set $d "es_url" $v.elasticsearch.url -}}
{{- if $v.elasticsearch.username }}{{ $_ := set $d "es_username" $v.elasticsearch.username }}{{ end -}}
{{- if $v.elasticsearch.passwordSecret.name }}{{ $_ := set $d "es_password_env" "ES_PASSWORD" }}{{ end -}}
{{- if $v.elasticsearch.apiKeySecret.name }}{{ $_ := set $d "es_api_key_env" "ES_API_KEY" }}{{ end -}}
{{- if $v.elasticsearch.caSecret.name }}{{ $_ := set $d "es_ca_file" (printf "%s/elasticsearch/ca.crt" (include "dfp.secretsDir" .)) }}{{ end -}}
{{- end -}}
{{- if and $declared (has "es_url" $declared) (not $v.elasticsearch.url) (not (hasKey $v.inference.vars "es_url")) -}}
{{- fail (printf "elasticsearch.url is required: pipeline %s writes to Elasticsearch" $v.inference.pipeline) -}}
{{- end -}}
{{- if $v.inference.store.enabled }}
{{- $_ := set $d "write_store" true -}}
{{- $_ := set $d "store" (printf "/var/lib/dfp-store/%s" $v.inference.store.fileName) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.inference.threshold) }}{{ $_ := set $d "threshold" $v.inference.threshold }}{{ end -}}
{{- if not (kindIs "invalid" $v.inference.checkpointSeconds) }}{{ $_ := set $d "checkpoint_secs" $v.inference.checkpointSeconds }}{{ end -}}
{{- merge (deepCopy $v.inference.vars) $d | toJson -}}
{{- end -}}

{{- define "dfp.training.vars" -}}
{{- $v := .Values -}}
{{- $d := dict -}}
{{- $declared := include "dfp.declaredVars" (dict "root" . "file" $v.training.pipeline) | fromJsonArray -}}
{{- if $v.training.input }}{{ $_ := set $d "input" $v.training.input }}{{ end -}}
{{- if and $declared (has "input" $declared) (not $v.training.input) (not (hasKey $v.training.vars "input")) -}}
{{- fail (printf "training.input is required: where pipeline %s reads the training logs (e.g. s3://logs/azure/)" $v.training.pipeline) -}}
{{- end -}}
{{- range $k := list "models" "start" "end" "warm_start" "holdout_from" "dry_run" "report" -}}
{{- if hasKey $v.training.vars $k -}}
{{- fail (printf "training.vars.%s: dfp retrain sets %s itself (from registry.location, training.windowDays, holdoutDays, dryRun, reportFile)" $k $k) -}}
{{- end -}}
{{- end -}}
{{- merge (deepCopy $v.training.vars) $d | toJson -}}
{{- end -}}

{{/*
A secretKeyRef env entry: (dict "name" ENV "secret" NAME "key" KEY)
*/}}
{{- define "dfp.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
{{- end -}}

{{/*
Environment common to every `dfp run` / `dfp retrain` container: logs, writable places, plugins,
registry and endpoint credentials (all from Secrets).
*/}}
{{- define "dfp.commonEnv" -}}
{{- $v := .Values -}}
- name: DFP_LOG
  value: {{ $v.log.level | quote }}
- name: DFP_LOG_FORMAT
  value: {{ $v.log.format | quote }}
- name: HOME
  value: /var/lib/dfp
- name: XDG_CACHE_HOME
  value: /var/cache/dfp
- name: TMPDIR
  value: /tmp
{{- if include "dfp.plugins.enabled" . }}
- name: DFP_PLUGIN_PATH
  value: /opt/dfp/extra-plugins:/opt/dfp/plugins
{{- end }}
{{- with $v.mlflow.tokenSecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "MLFLOW_TRACKING_TOKEN" "secret" .name "key" .key) }}
{{- end }}{{ end }}
{{- with $v.mlflow.basicAuthSecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "MLFLOW_TRACKING_USERNAME" "secret" .name "key" .usernameKey) }}
{{ include "dfp.secretEnv" (dict "name" "MLFLOW_TRACKING_PASSWORD" "secret" .name "key" .passwordKey) }}
{{- end }}{{ end }}
{{- with $v.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $v.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- with $v.s3.credentialsSecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "AWS_ACCESS_KEY_ID" "secret" .name "key" .accessKeyIdKey) }}
{{ include "dfp.secretEnv" (dict "name" "AWS_SECRET_ACCESS_KEY" "secret" .name "key" .secretAccessKeyKey) }}
{{- if .sessionTokenKey }}
{{ include "dfp.secretEnv" (dict "name" "AWS_SESSION_TOKEN" "secret" .name "key" .sessionTokenKey) }}
{{- end }}
{{- end }}{{ end }}
{{- end -}}

{{/*
Kafka and Elasticsearch settings for a pipeline's ${env:…} references.
*/}}
{{- define "dfp.endpointEnv" -}}
{{- $v := .Values -}}
{{- $dir := include "dfp.secretsDir" . -}}
{{- with $v.kafka.securityProtocol }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- if $v.kafka.tls.caSecret.name }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/kafka/ca.crt" $dir }}
{{- end }}
{{- if $v.kafka.tls.clientSecret.name }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: {{ printf "%s/kafka/client.crt" $dir }}
- name: KAFKA_SSL_KEY_LOCATION
  value: {{ printf "%s/kafka/client.key" $dir }}
{{- end }}
{{- with $v.kafka.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- with $v.kafka.sasl.username }}
- name: KAFKA_SASL_USERNAME
  value: {{ . | replace "$(" "$$(" | quote }}
{{- end }}
{{- with $v.kafka.sasl.passwordSecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "KAFKA_SASL_PASSWORD" "secret" .name "key" .key) }}
{{- end }}{{ end }}
{{- with $v.elasticsearch.passwordSecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "ES_PASSWORD" "secret" .name "key" .key) }}
{{- end }}{{ end }}
{{- with $v.elasticsearch.apiKeySecret }}{{ if .name }}
{{ include "dfp.secretEnv" (dict "name" "ES_API_KEY" "secret" .name "key" .key) }}
{{- end }}{{ end }}
{{- end -}}

{{/*
The projected volume of credential files (Kafka/Elasticsearch certificates, admin token, cluster secret):
(dict "root" $ "cluster" BOOL "admin" BOOL "endpoints" BOOL). Empty when there is none.
*/}}
{{- define "dfp.secretFiles" -}}
{{- $v := .root.Values -}}
{{- $sources := list -}}
{{- if and .cluster $v.inference.cluster.secret.name -}}
{{- $sources = append $sources (dict "secret" (dict "name" $v.inference.cluster.secret.name "items" (list (dict "key" $v.inference.cluster.secret.key "path" "cluster/secret")))) -}}
{{- end -}}
{{- if and .admin $v.admin.tokenSecret.name -}}
{{- $sources = append $sources (dict "secret" (dict "name" $v.admin.tokenSecret.name "items" (list (dict "key" $v.admin.tokenSecret.key "path" "admin/token")))) -}}
{{- end -}}
{{- if .endpoints -}}
{{- if $v.kafka.tls.caSecret.name -}}
{{- $sources = append $sources (dict "secret" (dict "name" $v.kafka.tls.caSecret.name "items" (list (dict "key" $v.kafka.tls.caSecret.key "path" "kafka/ca.crt")))) -}}
{{- end -}}
{{- with $v.kafka.tls.clientSecret -}}{{- if .name -}}
{{- $sources = append $sources (dict "secret" (dict "name" .name "items" (list (dict "key" .certKey "path" "kafka/client.crt") (dict "key" .keyKey "path" "kafka/client.key")))) -}}
{{- end -}}{{- end -}}
{{- if $v.elasticsearch.caSecret.name -}}
{{- $sources = append $sources (dict "secret" (dict "name" $v.elasticsearch.caSecret.name "items" (list (dict "key" $v.elasticsearch.caSecret.key "path" "elasticsearch/ca.crt")))) -}}
{{- end -}}
{{- end -}}
{{- if $sources -}}
- name: secret-files
  projected:
    defaultMode: 0440
    sources:
      {{- toYaml $sources | nindent 6 }}
{{- end -}}
{{- end -}}

{{- define "dfp.plugins.enabled" -}}
{{- if or .Values.plugins.image.repository .Values.plugins.volume -}}true{{- end -}}
{{- end -}}

{{/* The init container that copies plugins from their image. */}}
{{- define "dfp.plugins.initContainers" -}}
{{- $p := .Values.plugins -}}
{{- if $p.image.repository }}
- name: plugins
  image: {{ printf "%s:%s" $p.image.repository (default .Chart.AppVersion $p.image.tag) | quote }}
  imagePullPolicy: {{ $p.image.pullPolicy }}
  {{- if $p.image.command }}
  command:
    {{- toYaml $p.image.command | nindent 4 }}
  {{- else }}
  command: ["cp", "-R", {{ printf "%s/." (trimSuffix "/" $p.image.sourceDir) | quote }}, "/opt/dfp/extra-plugins/"]
  {{- end }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 128Mi
  volumeMounts:
    - name: plugins
      mountPath: /opt/dfp/extra-plugins
{{- end }}
{{- end -}}

{{/* Volumes every dfp run/retrain pod has, besides its state. */}}
{{- define "dfp.commonVolumes" -}}
- name: pipelines
  configMap:
    name: {{ include "dfp.pipelines.configMap" . }}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- if .Values.plugins.image.repository }}
- name: plugins
  emptyDir: {}
{{- else if .Values.plugins.volume }}
- name: plugins
  {{- toYaml .Values.plugins.volume | nindent 2 }}
{{- end }}
{{- if .Values.registry.volume.existingClaim }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ .Values.registry.volume.existingClaim | quote }}
{{- end }}
{{- end -}}

{{- define "dfp.commonMounts" -}}
- name: pipelines
  mountPath: /etc/dfp/pipelines
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/dfp
- name: state
  mountPath: /var/lib/dfp
{{- if include "dfp.plugins.enabled" . }}
- name: plugins
  mountPath: /opt/dfp/extra-plugins
  readOnly: true
{{- end }}
{{- if .Values.registry.volume.existingClaim }}
- name: registry
  mountPath: {{ .Values.registry.volume.mountPath }}
{{- end }}
{{- end -}}

{{/* Checks that span several values (the schema checks each one). */}}
{{- define "dfp.validate" -}}
{{- $v := .Values -}}
{{- if and $v.inference.enabled (eq $v.inference.mode "cluster") (gt (int $v.inference.replicas) 1) (not $v.inference.cluster.secret.name) -}}
{{- fail "inference.cluster.secret.name is required with more than one process: name an existing Secret holding the cluster secret (at least 16 characters), e.g. kubectl create secret generic dfp-cluster --from-literal=cluster-secret=\"$(openssl rand -hex 24)\"" -}}
{{- end -}}
{{- if and $v.inference.enabled (eq $v.inference.mode "consumers") -}}
{{- /* Each consumer passes --var consumer_index=<its pod index> --var consumers=<replicas>: the pipeline must
declare both (a shipped or pipelines.files pipeline is checked; one of pipelines.configMap cannot be). */ -}}
{{- if not $v.pipelines.configMap -}}
{{- $declared := include "dfp.declaredVars" (dict "root" . "file" $v.inference.pipeline) | fromJsonArray -}}
{{- $missing := list -}}
{{- range $k := list "consumer_index" "consumers" -}}
{{- if not (has $k $declared) }}{{ $missing = append $missing $k }}{{ end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "inference.mode consumers: pipeline %s does not declare the variable(s) %s. Each consumer pod runs it with --var consumer_index=<its pod index> --var consumers=<inference.replicas>, which its kafka-source must use (share: with index: ${consumer_index} and count: ${consumers}, as pipelines/azure-kafka-inference.yaml does); or use mode cluster" $v.inference.pipeline (join ", " $missing)) -}}
{{- end -}}
{{- end -}}
{{- range $k := list "consumer_index" "consumers" -}}
{{- if hasKey $v.inference.vars $k -}}
{{- fail (printf "inference.vars.%s: in mode consumers the chart sets %s itself (consumer_index from each pod's index, consumers from inference.replicas)" $k $k) -}}
{{- end -}}
{{- end -}}
{{- if and $v.inference.store.enabled (gt (int $v.inference.replicas) 1) -}}
{{- fail "inference.store with inference.mode consumers and more than one replica: every consumer is a process 0 of its own, so each would write the shared SQLite store, several writers on one file from several nodes (SQLite's write-ahead log needs them on one node). Use mode cluster (process 0 writes the store for every user) or one consumer" -}}
{{- end -}}
{{- end -}}
{{- if and $v.inference.enabled $v.inference.store.enabled (not $v.inference.store.existingClaim) -}}
{{- fail "inference.store.existingClaim is required with inference.store.enabled: a PersistentVolumeClaim the inference pods and the console share" -}}
{{- end -}}
{{- if $v.console.enabled -}}
{{- if not $v.console.tokenSecret.name -}}
{{- fail "console.tokenSecret.name is required: dfp serve listens on 0.0.0.0 and refuses to start without a token (at least 16 characters), e.g. kubectl create secret generic dfp-console --from-literal=token=\"$(openssl rand -hex 24)\"" -}}
{{- end -}}
{{- if not (and $v.inference.store.enabled $v.inference.store.existingClaim) -}}
{{- fail "console.enabled needs inference.store.enabled and inference.store.existingClaim: the console reads the alert store the inference pipeline writes" -}}
{{- end -}}
{{- end -}}
{{- if and $v.registry.location (not (regexMatch "^(s3://|mlflow://|mlflow\\+https://)" $v.registry.location)) (not $v.registry.volume.existingClaim) -}}
{{- fail (printf "registry.location %q is a directory: mount it with registry.volume.existingClaim (or use s3:// or mlflow://)" $v.registry.location) -}}
{{- end -}}
{{- if and $v.training.enabled (ge (float64 $v.training.holdoutDays) (float64 $v.training.windowDays)) -}}
{{- fail (printf "training.holdoutDays (%v) must be less than training.windowDays (%v)" $v.training.holdoutDays $v.training.windowDays) -}}
{{- end -}}
{{- range $file := keys $v.pipelines.files | sortAlpha -}}
{{- range $pair := regexFindAll "(?im)(^|[{,])[ \\t-]*[\\w.-]*(pass(word)?|passwd|secret|token|api_?key|credentials?)[\\w.-]*[ \\t]*:[ \\t]*[^\\s#,}]+" (index $v.pipelines.files $file) -1 -}}
{{- $key := regexReplaceAll "^[{,]?[ \\t-]*([\\w.-]+)[ \\t]*:.*$" $pair "${1}" -}}
{{- $value := regexReplaceAll "^[^:]*:[ \\t]*" $pair "" | trim -}}
{{- if and (not (regexMatch "(?i)(_env|_file|_path|\\.location)$" $key)) (not (regexMatch "^(\"?\\$\\{|null\\b|~|\"\"|''|\\{|\\[)" $value)) -}}
{{- fail (printf "pipelines.files.%s: %s holds a literal value; credentials come from a Secret through ${env:NAME} (see the chart README), never from the pipeline text" $file $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.plugins.image.repository $v.plugins.volume -}}
{{- fail "plugins: give plugins.image or plugins.volume, not both" -}}
{{- end -}}
{{- end -}}
