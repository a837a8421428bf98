{{/*
The chart's name, or nameOverride.
*/}}
{{- define "meshredirect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release
name if it contains the chart's name ("meshredirect" for the documented
install), else <release>-<chart>. 63 characters at most (DNS labels).
*/}}
{{- define "meshredirect.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The labels that select the agent's pods; they never change after install.
*/}}
{{- define "meshredirect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshredirect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The labels of every object.
*/}}
{{- define "meshredirect.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshredirect.selectorLabels" . }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: meshredirect
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The agent's ServiceAccount: the one created, or the one named.
*/}}
{{- define "meshredirect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshredirect.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when image.digest is set, else repository:tag, the tag
defaulting to the chart's appVersion.
*/}}
{{- define "meshredirect.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The ambient config file's path, from its directory (a hostPath volume) and name.
*/}}
{{- define "meshredirect.configFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.configFile.dir) .Values.configFile.name }}
{{- end }}
